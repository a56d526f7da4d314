# Like nixpkgs' python-packages.nix: buildPythonPackage names the derivation
# "python3.13-<pname>-<version>" while pname stays the project's name.
{
  lib,
  stdenv,
}:
let
  buildPythonPackage =
    args@{ pname, version, ... }:
    stdenv.mkDerivation (
      args
      // {
        name = "python3.13-${pname}-${version}";
      }
    );
in
{
  # Tells nix-env to descend into this set (nixpkgs: lib.recurseIntoAttrs).
  recurseForDerivations = true;

  requests = buildPythonPackage {
    pname = "requests";
    version = "2.32.3";
    meta = {
      description = "HTTP library for Python";
      homepage = "https://requests.readthedocs.io/";
      changelog = "https://github.com/psf/requests/blob/v2.32.3/HISTORY.md";
      license = lib.licenses.asl20;
      maintainers = [ lib.maintainers.bob ];
      teams = [ lib.teams.python ];
    };
  };

  numpy = buildPythonPackage {
    pname = "numpy";
    version = "2.1.3";
    outputs = [
      "out"
      "dist"
    ];
    meta = {
      description = "Scientific tools for Python";
      homepage = "https://numpy.org/";
      license = lib.licenses.mit;
      teams = [ lib.teams.python ];
    };
  };

  oldcrypto = buildPythonPackage {
    pname = "oldcrypto";
    version = "0.9";
    meta = {
      description = "Cryptography that should no longer be used";
      license = lib.licenses.mit;
      broken = true;
    };
  };

  removedlib = throw "python313Packages.removedlib has been removed: it was unmaintained";

  # A set inside a recursed set, itself not recursed into: nix-env must not list it.
  internals = {
    bootstrap-pip = buildPythonPackage {
      pname = "bootstrap-pip";
      version = "24.0";
      meta.description = "pip used to bootstrap the package set";
    };
  };
}
