# The packages, one of each shape a real nixpkgs evaluation produces, including the failures
# nix-env would otherwise hide (a throw, an assertion, a meta field that throws).
{
  lib,
  stdenv,
  pkgs,
}:
{
  hello = stdenv.mkDerivation {
    pname = "hello";
    version = "2.12.1";
    meta = {
      description = "Program that produces a familiar, friendly greeting";
      longDescription = ''
        GNU Hello greets you in your language: Grüezi from Zürich, こんにちは from Tokyo,
        你好 from Beijing, and 👋 everywhere else.
      '';
      homepage = "https://www.gnu.org/software/hello/manual/";
      changelog = "https://git.savannah.gnu.org/cgit/hello.git/plain/NEWS?h=v2.12.1";
      license = lib.licenses.gpl3Plus;
      maintainers = [
        lib.maintainers.alice
        lib.maintainers.chen
      ];
      mainProgram = "hello";
      platforms = lib.platforms.all;
    };
  };

  ripgrep = stdenv.mkDerivation {
    pname = "ripgrep";
    version = "14.1.1";
    meta = {
      description = "Utility that combines the usability of The Silver Searcher with the raw speed of grep";
      homepage = [
        "https://github.com/BurntSushi/ripgrep"
        "https://burntsushi.net/ripgrep/"
      ];
      license = [
        lib.licenses.mit
        lib.licenses.unlicense
      ];
      maintainers = [ lib.maintainers.bob ];
      mainProgram = "rg";
      platforms = lib.platforms.all;
    };
  };

  # Very old packages still write their license as a plain string.
  xlegacy = stdenv.mkDerivation {
    pname = "xlegacy";
    version = "1.0";
    meta = {
      description = "Tool from the days of license strings";
      license = "GPL";
      platforms = lib.platforms.linux;
    };
  };

  coreutils = stdenv.mkDerivation {
    pname = "coreutils";
    version = "9.5";
    outputs = [
      "bin"
      "out"
      "man"
      "info"
    ];
    meta = {
      description = "GNU Core Utilities";
      homepage = "https://www.gnu.org/software/coreutils/";
      license = lib.licenses.gpl3Plus;
      platforms = lib.platforms.all;
    };
  };

  # No version at all: nix-env's split leaves it empty.
  nixos-artwork-wallpapers = stdenv.mkDerivation {
    name = "nixos-artwork-wallpapers";
    meta.description = "Wallpapers from the NixOS artwork repository";
  };

  # nix-env splits the name at "-2024", the derivation knows better.
  tinyfetch = stdenv.mkDerivation {
    pname = "tinyfetch";
    version = "unstable-2024-01-15";
    meta = {
      description = "Small system information tool";
      license = lib.licenses.mit;
      mainProgram = "tinyfetch";
    };
  };

  abandonware = stdenv.mkDerivation {
    pname = "abandonware";
    version = "0.3";
    meta = {
      description = "Program that no longer builds";
      license = lib.licenses.mit;
      broken = true;
    };
  };

  openssl_1_0 = stdenv.mkDerivation {
    pname = "openssl";
    version = "1.0.2u";
    meta = {
      description = "Cryptographic library that implements the SSL and TLS protocols";
      license = lib.licenses.asl20;
      knownVulnerabilities = [
        "OpenSSL 1.0.2 is end of life"
        "CVE-2020-1971"
      ];
    };
  };

  proprietary-viewer = stdenv.mkDerivation {
    pname = "proprietary-viewer";
    version = "5.0";
    meta = {
      description = "Document viewer under a proprietary license";
      license = lib.licenses.unfree;
      platforms = [ "x86_64-linux" "aarch64-linux" ];
    };
  };

  mmixware = stdenv.mkDerivation {
    pname = "mmixware";
    version = "2017-06-16";
    meta = {
      description = "Tools for Knuth's MMIX computer";
      license = lib.licenses.mit;
      platforms = [ "mmix-mmixware" ];
    };
  };

  removed-tool = throw "removed-tool has been removed from the package set";

  needs-feature = assert false; stdenv.mkDerivation {
    pname = "needs-feature";
    version = "1.0";
  };

  # One meta field throws; the rest of the package must survive.
  descriptionless = stdenv.mkDerivation {
    pname = "descriptionless";
    version = "1.2";
    meta = {
      description = throw "the description reads a file that is missing";
      homepage = "https://example.org/descriptionless";
      license = lib.licenses.mit;
    };
  };

  # Functions and derivations are not valid meta values; nix-env refuses them.
  fancy-meta = stdenv.mkDerivation {
    pname = "fancy-meta";
    version = "3.1";
    meta = {
      description = "Package whose meta holds a function and a derivation";
      updateWith = version: "https://example.org/fancy-meta-${version}.tar.gz";
      relatedPackage = pkgs.hello;
      license = lib.licenses.mit;
    };
  };

  # nix-env nulls a null meta value and says so on stderr.
  nullable = stdenv.mkDerivation {
    pname = "nullable";
    version = "0.1";
    meta = {
      description = "Package whose homepage is null";
      homepage = null;
    };
  };

  chatty = stdenv.mkDerivation {
    pname = "chatty";
    version = "1.0";
    meta = {
      description = builtins.trace "chatty: evaluating my description" "Package that traces while it evaluates";
      maintainers = [ lib.maintainers.dave ];
    };
  };

  # Nix strings are bytes: this description is Latin-1 with a control character, and nix-env
  # writes those bytes as they are, which is not valid UTF-8.
  latin1-doc = stdenv.mkDerivation {
    pname = "latin1-doc";
    version = "1.0";
    meta.description = builtins.readFile ./latin1-description.txt;
  };

  # Written without mkDerivation: no computed flags, the normalizer derives them.
  raw-drv =
    derivation {
      name = "raw-drv-0.5";
      inherit (pkgs.hello) system;
      builder = "/bin/sh";
    }
    // {
      meta = {
        description = "Derivation written by hand";
        license = lib.licenses.unfree;
        knownVulnerabilities = [ "CVE-2023-0001" ];
      };
    };

  # Not marked recurseForDerivations: nix-env does not look inside.
  nodeHidden = {
    left-pad = stdenv.mkDerivation {
      pname = "left-pad";
      version = "1.3.0";
      meta.description = "String left pad";
    };
  };

  fontsDisabled = {
    recurseForDerivations = false;
    comic-neue = stdenv.mkDerivation {
      pname = "comic-neue";
      version = "2.51";
      meta.description = "Casual font";
    };
  };

  python313Packages = import ./python-packages.nix { inherit lib stdenv; };
}
