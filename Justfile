# Strata developer recipes; `just` lists them.
# The workspace root is itself a package, so the cargo commands say --workspace (without it,
# only the `strata` binary's package would be formatted, linted or tested).

set positional-arguments

# List the recipes.
default:
    @just --list

# Format every crate.
fmt:
    cargo fmt --all

# Lint every crate and target; warnings are errors.
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# Run all tests in release mode (integration tests mount for real: run as root).
test:
    cargo test --workspace --release

# ext4, kernel overlayfs, fuse-overlayfs and Strata on the same disk, as root, e.g.
# `just bench --quick` (2 minutes) or `just bench` (full, ~20 minutes); results in bench/results/<date>/.
bench *args:
    cargo build --release --bin strata
    cargo run -p bench --release -- "$@"

# Only the fio workloads of the benchmark, e.g. `just fio --quick`.
fio *args:
    just bench --only fio- "$@"

# Start Strata (`strata up`).
up *args:
    cargo run --release -- up "$@"
