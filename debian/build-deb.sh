#!/bin/sh
# Builds the Debian package (target/debian/deployd_*.deb): the release binary, then the shell
# completions and man pages generated from its clap definitions (`deployd generate`, a hidden
# command), then `cargo deb --no-build`, which packs what [package.metadata.deb] in Cargo.toml
# lists. Needs cargo-deb (`cargo install cargo-deb`). Extra arguments go to `cargo deb`.
set -eu
cd "$(dirname "$0")/.."

cargo build --release --locked
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/release/deployd"
# Where Cargo.toml's assets expect them, whatever CARGO_TARGET_DIR is.
gen=target/generated
rm -rf "$gen"
for shell in bash zsh fish; do
    "$bin" generate completions "$shell" --out "$gen/completions" >/dev/null
done
"$bin" generate man --out "$gen/man" >/dev/null
cargo deb --no-build "$@"
