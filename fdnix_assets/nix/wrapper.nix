# Evaluates a nixpkgs-like package set for `nix-env -qaP --json --meta`, isolating failures.
#
# nix-env skips a package whose evaluation throws without a word, and prints truncated JSON when
# one meta field throws. This wrapper evaluates each package under `builtins.tryEval`, rebuilds
# it as a plain record whose every field is known to evaluate, and records what went wrong in
# `meta._fdnix`, which the normalizer strips again:
#   pname, version       the derivation's own attributes (nix-env only splits `name`)
#   invalidMeta          meta fields that threw or held functions or derivations (left out)
#   evaluationFailed     true when the package itself could not be evaluated
# Arguments come as strings (`--argstr`), so no value is ever spliced into Nix code:
#   nixpkgsPath        an absolute path to a nixpkgs tree (or any file/dir nixpkgs-like)
#   nixpkgsUrl         a tarball URL, fetched with builtins.fetchTarball
#   nixpkgsSearchPath  a NIX_PATH entry, `nixpkgs` for <nixpkgs> (the default)
{
  nixpkgsPath ? null,
  nixpkgsUrl ? null,
  nixpkgsSearchPath ? "nixpkgs",
  system ? builtins.currentSystem,
}:
let
  nixpkgs =
    if nixpkgsPath != null then
      /. + nixpkgsPath
    else if nixpkgsUrl != null then
      builtins.fetchTarball nixpkgsUrl
    else
      builtins.findFile builtins.nixPath nixpkgsSearchPath;

  # What a search user wants to find: everything nixpkgs knows, flagged rather than hidden.
  config = {
    allowUnfree = true;
    allowBroken = true;
    allowUnsupportedSystem = true;
    allowInsecurePredicate = _: true;
    allowAliases = false;
    checkMeta = false;
  };

  imported = import nixpkgs;
  # Pass only the arguments the set declares: nixpkgs takes both, a small test set may take fewer.
  packageSet =
    if builtins.isFunction imported then
      imported (builtins.intersectAttrs (builtins.functionArgs imported) { inherit config system; })
    else
      imported;

  attempt = value:
    let
      result = builtins.tryEval (builtins.deepSeq value value);
    in
    if result.success then { ok = true; value = result.value; } else { ok = false; value = null; };

  isDerivation = value: builtins.isAttrs value && (value.type or null) == "derivation";

  # nix-env refuses meta values that are functions or contain derivations; so do we, but we say so.
  # It also nulls a whole meta attribute when a null hides anywhere inside it, so one maintainer
  # with `email = null` would cost the whole list: nested nulls are dropped instead.
  plainMetaValue =
    value:
    if builtins.isFunction value || isDerivation value then
      throw "not a plain value"
    else if builtins.isAttrs value then
      builtins.mapAttrs (_: plainMetaValue) (nonNull value)
    else if builtins.isList value then
      map plainMetaValue (builtins.filter (item: item != null) value)
    else
      value;

  sanitizeMeta =
    meta:
    let
      names = builtins.attrNames meta;
      attempts = builtins.listToAttrs (
        map (name: {
          inherit name;
          value = attempt (plainMetaValue meta.${name});
        }) names
      );
    in
    rec {
      invalid = builtins.filter (name: !attempts.${name}.ok) names;
      values = builtins.mapAttrs (_: a: a.value) (builtins.removeAttrs attempts invalid);
    };

  nonNull = attrs: builtins.removeAttrs attrs (builtins.filter (name: attrs.${name} == null) (builtins.attrNames attrs));

  stringOrNull = value: let a = attempt value; in if a.ok && builtins.isString a.value then a.value else null;

  # A recognisable name per failure, for anyone reading nix-env's raw output.
  failedRecord = name: {
    type = "derivation";
    name = "fdnix-evaluation-failed-${name}";
    system = "unknown";
    outputName = "out";
    outputs = [ "out" ];
    meta._fdnix.evaluationFailed = true;
  };

  packageRecord =
    attrName: drv:
    let
      name = attempt drv.name;
      metaAttempt = builtins.tryEval (if builtins.isAttrs (drv.meta or { }) then drv.meta or { } else { });
      meta = if metaAttempt.success then sanitizeMeta metaAttempt.value else { values = { }; invalid = [ "meta" ]; };
      outputs = attempt (drv.outputs or [ "out" ]);
      outputName = attempt (drv.outputName or "out");
    in
    if !(name.ok && builtins.isString name.value) then
      failedRecord attrName
    else
      {
        type = "derivation";
        name = name.value;
        system = let s = stringOrNull (drv.system or null); in if s == null then "unknown" else s;
        outputName = if outputName.ok && builtins.isString outputName.value then outputName.value else "out";
        outputs = if outputs.ok && builtins.isList outputs.value then outputs.value else [ "out" ];
        # nix-env nulls a whole meta attribute that holds a null anywhere inside it, so an
        # absent pname/version is left out rather than written as null.
        meta = meta.values // {
          _fdnix = nonNull {
            pname = stringOrNull (drv.pname or null);
            version = stringOrNull (drv.version or null);
            invalidMeta = meta.invalid;
          };
        };
      };

  walk =
    attrs:
    builtins.listToAttrs (
      builtins.concatMap (
        name:
        let
          value = builtins.tryEval attrs.${name};
          isDrv = builtins.tryEval (isDerivation value.value);
          recurse = builtins.tryEval (
            builtins.isAttrs value.value && (value.value.recurseForDerivations or false) == true
          );
        in
        if !(value.success && isDrv.success) then
          [ { inherit name; value = failedRecord name; } ]
        else if isDrv.value then
          [ { inherit name; value = packageRecord name value.value; } ]
        else if recurse.success && recurse.value then
          [ { inherit name; value = walk value.value // { recurseForDerivations = true; }; } ]
        else
          [ ]
      ) (builtins.attrNames attrs)
    );
in
walk packageSet
