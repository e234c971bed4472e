# The agent's tasks. `make serve` runs the agent, `make test` runs every test.

CARGO ?= cargo
PREFIX ?= /usr/local
# The release binary is linked statically (crt-static), so it runs on any
# Linux of the same architecture without the libraries it was built with.
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
BIN := target/$(HOST)/release/agent
# Where `make serve` keeps job logs, its certificate and its JWT secret.
DATA_DIR ?= $(HOME)/.local/state/agent

.PHONY: all build release install serve token test lint bench example clean

all: release

build:
	$(CARGO) build

release:
	RUSTFLAGS="$(RUSTFLAGS) -C target-feature=+crt-static" $(CARGO) build --release --target $(HOST)

install: release
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/agent

# Serves the API on embedded defaults: port 8000, a self-signed certificate
# and a random JWT secret, both made on first start and kept in DATA_DIR.
serve: release
	@mkdir -p $(DATA_DIR)
	@[ -s $(DATA_DIR)/secret ] || (umask 077; head -c 32 /dev/urandom | base64 > $(DATA_DIR)/secret)
	$(BIN) serve --auth-token-secret-file $(DATA_DIR)/secret --data-dir $(DATA_DIR) $(ARGS)

# Prints a token for the secret `make serve` uses.
token: release
	@$(BIN) token --auth-token-secret-file $(DATA_DIR)/secret

# Runs the sample job on this host and shows it live.
example: release
	$(BIN) run examples/hello.yaml

# Formatting, lints, then every unit and integration test.
test: lint
	$(CARGO) nextest run --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench:
	$(CARGO) bench --bench bench

clean:
	$(CARGO) clean
