# A small package set in nixpkgs' image, evaluated by the real nix-env in the tests.
#
# Called like nixpkgs: `import ./. { config = { ... }; system = ...; }`. Without a permissive
# config its broken, unfree, insecure and unsupported packages refuse to evaluate, and with
# `config.allowAliases` (true by default) the aliases of pkgs/aliases.nix are added.
{
  config ? { },
  system ? builtins.currentSystem,
}:
let
  lib = import ./lib.nix;
  stdenv = import ./stdenv.nix { inherit lib config system; };
  pkgs = import ./pkgs/top-level.nix { inherit lib stdenv pkgs; };
  aliases = if config.allowAliases or true then import ./pkgs/aliases.nix pkgs else { };
in
pkgs // aliases
