# The few pieces of nixpkgs' lib the test package set needs: licenses, maintainers, teams,
# platforms, written in the same shapes as nixpkgs' lib/licenses.nix and maintainer-list.nix.
rec {
  licenses = {
    mit = {
      spdxId = "MIT";
      shortName = "mit";
      fullName = "MIT License";
      url = "https://spdx.org/licenses/MIT.html";
      free = true;
      redistributable = true;
      deprecated = false;
    };
    asl20 = {
      spdxId = "Apache-2.0";
      shortName = "asl20";
      fullName = "Apache License 2.0";
      url = "https://spdx.org/licenses/Apache-2.0.html";
      free = true;
      redistributable = true;
      deprecated = false;
    };
    unlicense = {
      spdxId = "Unlicense";
      shortName = "unlicense";
      fullName = "The Unlicense";
      url = "https://spdx.org/licenses/Unlicense.html";
      free = true;
      redistributable = true;
      deprecated = false;
    };
    gpl3Plus = {
      spdxId = "GPL-3.0-or-later";
      shortName = "gpl3Plus";
      fullName = "GNU General Public License v3.0 or later";
      url = "https://spdx.org/licenses/GPL-3.0-or-later.html";
      free = true;
      redistributable = true;
      deprecated = false;
    };
    # Like nixpkgs' unfree record: no spdxId, no url.
    unfree = {
      shortName = "unfree";
      fullName = "Unfree";
      free = false;
      redistributable = false;
      deprecated = false;
    };
  };

  maintainers = {
    alice = {
      name = "Alice Müller";
      email = "alice@example.org";
      github = "alice-m";
      githubId = 1000001;
      matrix = "@alice:example.org";
      keys = [ { fingerprint = "ABCD 1234 EF56 7890 ABCD  1234 EF56 7890 ABCD 1234"; } ];
    };
    # No email, as for some real maintainers.
    bob = {
      name = "Bob Builder";
      github = "bob-b";
      githubId = 1000002;
    };
    # A null inside a maintainer record: nix-env would null the whole maintainers list.
    dave = {
      name = "Dave";
      email = null;
      github = "dave";
      githubId = 1000004;
    };
    chen = {
      name = "陈静";
      email = "chen@example.cn";
      github = "chenjing";
      githubId = 1000003;
    };
  };

  teams = {
    python = {
      shortName = "Python";
      scope = "Maintain the Python interpreter and related packages.";
      githubTeams = [ "python" ];
      members = [
        maintainers.alice
        maintainers.chen
      ];
    };
  };

  platforms = {
    linux = [
      "x86_64-linux"
      "aarch64-linux"
      "i686-linux"
      "riscv64-linux"
    ];
    darwin = [
      "x86_64-darwin"
      "aarch64-darwin"
    ];
    all = platforms.linux ++ platforms.darwin;
  };
}
