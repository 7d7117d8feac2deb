# Annals: `make run` serves on ./data, `make test` runs the whole suite.
# The first build compiles RocksDB from C++ source (about 15 minutes on 2 cores); the
# target directory is reused afterwards, so never `cargo clean`.

CARGO ?= cargo
DATA_DIR ?= ./data

.PHONY: run test deps fmt lint unit bench

deps:
	@scripts/install-deps

run: deps
	$(CARGO) run --release -- serve --data-dir $(DATA_DIR)

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

bench: deps
	$(CARGO) bench --bench append
