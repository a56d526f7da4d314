# Old names kept for compatibility, as in nixpkgs' pkgs/top-level/aliases.nix: only present
# when config.allowAliases is not false. A search index must not list them twice.
pkgs: {
  hello-legacy = pkgs.hello;
  rg = pkgs.ripgrep;
  python3Packages = pkgs.python313Packages;
}
