# Annals: `make run` serves on ./data, `make cluster` runs a local cluster (three NATS
# servers and two Annals nodes) on ./data/cluster, `make test` runs the whole suite.
# The first build compiles RocksDB from C++ source (about 15 minutes on 2 cores); the
# target directory is reused afterwards, so never `cargo clean`.

CARGO ?= cargo
DATA_DIR ?= ./data
CLUSTER_DIR ?= $(DATA_DIR)/cluster
# Cases per fuzz target in `make fuzz` (the smoke run in `make test` uses 2,000, and 300
# for the GraphQL request path, whose cases each run a request through the server).
FUZZ_CASES ?= 200000

.PHONY: run cluster test deps fmt bench fuzz soak

deps:
	@scripts/install-deps

run: deps
	$(CARGO) run --release -- serve --data-dir $(DATA_DIR)

# Ctrl-C stops all five processes. CLUSTER_NO_ANNALS=1 starts only NATS, ROLE_B sets node
# b's --role; scripts/cluster says more. Only the annals binary is built, as `run` does.
cluster: deps
	$(CARGO) build --release --bin annals
	CLUSTER_DIR=$(CLUSTER_DIR) scripts/cluster

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	ANNALS_NATS_SERVER="$$(scripts/nats-server-path)" $(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

# The criterion suite (HTML reports under the target directory's criterion/ folder).
bench: deps
	$(CARGO) bench

# The fuzz targets, long: arbitrary inputs against the decoders, validators, upcasters
# and the GraphQL request path.
fuzz: deps
	ANNALS_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p annals-store --test fuzz
	ANNALS_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --test fuzz_domain
	ANNALS_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --test fuzz_graphql -- --nocapture

# The crash loops, long: 100+ kills each; --nocapture shows each loop's figures.
soak: deps
	ANNALS_CRASH_ROUNDS=100 $(CARGO) test --release -p annals-store --test crash -- --nocapture
	ANNALS_PROJECTION_CRASH_ROUNDS=100 ANNALS_PROJECTION_REBUILD_KILLS=50 ANNALS_PROJECTION_REBUILD_EVENTS=500000 $(CARGO) test --release --test projection_crash -- --nocapture
	ANNALS_SERVER_CRASH_ROUNDS=100 $(CARGO) test --release --test server_crash -- --nocapture
	ANNALS_LIFECYCLE_CRASH_ROUNDS=50 $(CARGO) test --release --test lifecycle_crash -- --nocapture
