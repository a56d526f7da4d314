"""Getting nixpkgs metadata: evaluating with the real nix-env, or reading a ready dump."""
