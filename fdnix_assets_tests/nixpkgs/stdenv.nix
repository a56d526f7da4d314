# A stand-in for nixpkgs' stdenv.mkDerivation and pkgs/stdenv/generic/check-meta.nix.
#
# Like nixpkgs, a package that is broken, unfree, insecure (knownVulnerabilities) or not
# available on `system` refuses to evaluate unless `config` allows it (allowBroken,
# allowUnfree / allowUnfreePredicate, allowInsecurePredicate / permittedInsecurePackages,
# allowUnsupportedSystem), and with `config.checkMeta` unknown meta attributes are rejected.
# The finished meta carries what nixpkgs' commonMeta adds: name, position, outputsToInstall
# and the flags unfree, insecure, broken, unsupported and available.
{
  lib,
  config,
  system,
}:
let
  knownMetaAttributes = [
    "description"
    "longDescription"
    "homepage"
    "license"
    "maintainers"
    "teams"
    "platforms"
    "badPlatforms"
    "broken"
    "knownVulnerabilities"
    "mainProgram"
    "changelog"
    "downloadPage"
    "outputsToInstall"
    "position"
    "sourceProvenance"
    "hydraPlatforms"
    "priority"
  ];

  isUnfree =
    meta:
    let
      license = meta.license or [ ];
      licenses = if builtins.isList license then license else [ license ];
    in
    builtins.any (l: builtins.isAttrs l && !(l.free or true)) licenses;

  allowUnfree = attrs: config.allowUnfree or false || (config.allowUnfreePredicate or (_: false)) attrs;

  allowInsecure =
    attrs:
    (config.allowInsecurePredicate or (a: builtins.elem a.name (config.permittedInsecurePackages or [ ])))
      attrs;
in
{
  mkDerivation =
    args@{
      pname ? null,
      version ? null,
      name ? "${pname}-${version}",
      outputs ? [ "out" ],
      meta ? { },
      passthru ? { },
      ...
    }:
    let
      # nixpkgs points at the description when there is one, else at the name.
      pos =
        if meta ? description then
          builtins.unsafeGetAttrPos "description" meta
        else
          builtins.unsafeGetAttrPos (if args ? pname then "pname" else "name") args;
      position = if pos == null then null else "${pos.file}:${toString pos.line}";

      unfree = isUnfree meta;
      insecure = (meta.knownVulnerabilities or [ ]) != [ ];
      broken = meta.broken or false;
      unsupported =
        !(builtins.elem system (meta.platforms or lib.platforms.all))
        || builtins.elem system (meta.badPlatforms or [ ]);
      unknownMeta = builtins.filter (n: !(builtins.elem n knownMetaAttributes)) (builtins.attrNames meta);

      predicateArgs = args // {
        inherit name;
      };
      problem =
        if (config.checkMeta or false) && unknownMeta != [ ] then
          "has an invalid meta attrset: unknown attribute ${builtins.head unknownMeta}"
        else if unfree && !(allowUnfree predicateArgs) then
          "has an unfree license, refusing to evaluate (set allowUnfree = true)"
        else if broken && !(config.allowBroken or false) then
          "is marked as broken, refusing to evaluate (set allowBroken = true)"
        else if unsupported && !(config.allowUnsupportedSystem or false) then
          "is not available on the requested hostPlatform ${system}, refusing to evaluate"
        else if insecure && !(allowInsecure predicateArgs) then
          "is marked as insecure, refusing to evaluate (see permittedInsecurePackages)"
        else
          null;

      drv = derivation {
        inherit name system outputs;
        builder = "/bin/sh";
        args = [
          "-c"
          "echo this test package is never built; exit 1"
        ];
      };

      fullMeta = meta // {
        inherit
          name
          position
          unfree
          insecure
          broken
          unsupported
          ;
        outputsToInstall = [ (builtins.head outputs) ] ++ (if builtins.elem "man" outputs then [ "man" ] else [ ]);
        # Under a config that allows everything this is true even for a broken package,
        # exactly as in nixpkgs.
        available = problem == null;
      };
    in
    if problem != null then
      throw "Package ‘${name}’ in ${toString position} ${problem}."
    else
      drv
      // (if args ? pname then { inherit pname; } else { })
      // (if version != null then { inherit version; } else { })
      // passthru
      // {
        meta = fullMeta;
      };
}
