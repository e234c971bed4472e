# The agent's tasks. `make serve` runs the agent, `make test` runs every test.

CARGO ?= cargo
# The test recipe needs pipefail.
SHELL := bash
PREFIX ?= /usr/local
# The release binary is linked statically (crt-static), so it runs on any
# Linux of the same architecture without the libraries it was built with.
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
BIN := target/$(HOST)/release/agent
# Where `make serve` keeps job logs, its certificate and its JWT secret.
DATA_DIR ?= $(HOME)/.local/state/agent

# nextest when it is installed, else plain cargo test: the same tests.
TEST_RUNNER = $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo 'nextest run' || echo test)
# Where tests that cannot run here (no Docker, no sshd) record why, and
# where the runner's output is kept for tests/summary.sh to count.
SKIP_LOG := $(CURDIR)/target/skips
TEST_OUTPUT := $(CURDIR)/target/test-output.txt

.PHONY: all build release install uninstall serve token test lint bench example mutants clean

all: release

build:
	$(CARGO) build

STATIC_BUILD = RUSTFLAGS="$(RUSTFLAGS) -C target-feature=+crt-static" $(CARGO) build --release --target $(HOST)

release:
	$(STATIC_BUILD)

# The binary, a systemd unit per mode and, in $(DESTDIR)/etc/agent, the
# environment file, the listen configuration, the token file and a JWT
# secret (never overwriting them): dist/install.sh, README "Run it as a
# service". AGENT_USER=name creates that system user and runs the units as
# it. BIN=path on the command line installs that binary without building.
# `make uninstall` removes what the install recorded, and only that.
UNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL_ENV = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" UNITDIR="$(UNITDIR)" \
	AGENT_USER="$(AGENT_USER)" BIN="$(BIN)"

install: $(if $(filter command line,$(origin BIN)),,release)
	@$(INSTALL_ENV) dist/install.sh install

uninstall:
	@$(INSTALL_ENV) dist/install.sh uninstall

# Serves the API on embedded defaults: port 8000, a self-signed certificate
# and a random JWT secret, both made on first start and kept in DATA_DIR.
serve: release
	@mkdir -p $(DATA_DIR)
	@[ -s $(DATA_DIR)/secret ] || (umask 077; head -c 32 /dev/urandom | base64 > $(DATA_DIR)/secret)
	$(BIN) serve --auth-token-secret-file $(DATA_DIR)/secret --data-dir $(DATA_DIR) $(ARGS)

# Prints a token for the secret `make serve` uses.
# Quiet: its output is the token alone (`T=$$(make -s token)`).
token:
	@$(STATIC_BUILD) --quiet
	@$(BIN) token --auth-token-secret-file $(DATA_DIR)/secret

# Runs the sample job on this host and shows it live.
example: release
	$(BIN) run examples/hello.yaml

# Formatting, lints, then every unit and integration test; then the tests
# that could not run here, and why, with a closing count that has them as
# skipped (tests/summary.sh). The exit status is the test runner's.
test: lint
	@rm -rf $(SKIP_LOG) && mkdir -p $(SKIP_LOG)
	@set -o pipefail; \
	AGENT_SKIP_LOG=$(SKIP_LOG) $(CARGO) $(TEST_RUNNER) --no-fail-fast 2>&1 | tee $(TEST_OUTPUT); \
	status=$$?; \
	tests/summary.sh $(SKIP_LOG) $(TEST_OUTPUT); \
	exit $$status

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The first row is the static release binary's size (built here, named in
# AGENT_STATIC_BIN), against its limit of 7.5 MiB (README, Performance).
bench: release
	AGENT_STATIC_BIN=$(CURDIR)/$(BIN) $(CARGO) bench --bench bench
	$(CARGO) bench --bench cache

# Mutation testing (not part of `make test`): cargo-mutants, pinned, plants
# one bug at a time in each of these modules and runs the unit tests named
# after the colon; a bug no test notices is reported as MISSED. One run per
# module, in place (do not edit the tree meanwhile), one build at a time.
# Reports go to mutants.out/<module>/; README, Tests, lists the mutants that
# no test can notice. The tests run in a PID namespace of their own and in a
# session of their own: a planted bug in process killing (`kill -1`,
# `kill 0`) must not reach the host's processes. Each process of a test run
# gets at most MUTANTS_MEMORY_MIB (4096) MiB of address space (`prlimit
# --as`, inherited by the processes the tests start): a mutant that
# allocates without end dies there (an allocation fails, the test binary
# aborts and the mutant counts as caught) instead of exhausting the machine.
MUTANTS_VERSION := 27.1.0
MUTANTS_TIMEOUT ?= 60
MUTANTS_MEMORY_MIB ?= 4096
MUTANTS_RUNNER_VAR := CARGO_TARGET_$(shell echo $(HOST) | tr a-z- A-Z_)_RUNNER
MUTANTS_RUNNER = prlimit --as=$$(($(MUTANTS_MEMORY_MIB) << 20)) -- \
	unshare --map-root-user --pid --fork --mount-proc setsid --wait
MUTANTS_TARGETS := \
	src/process/output.rs:process:: \
	src/process/procs.rs:process:: \
	src/job/eventlog.rs:job::eventlog \
	src/api/auth.rs:api::auth \
	src/http/request_head.rs:http::request_head,http::tests::defences

mutants:
	@$(CARGO) mutants --version 2>/dev/null | grep -qx 'cargo-mutants $(MUTANTS_VERSION)' \
		|| $(CARGO) install --locked cargo-mutants@$(MUTANTS_VERSION)
	@status=0; for target in $(MUTANTS_TARGETS); do \
		file=$${target%%:*}; filters=$$(echo "$${target#*:}" | tr , ' '); \
		out=mutants.out/$$(basename $$file .rs); mkdir -p $$out; \
		echo "== $$file (tests: $$filters)"; \
		$(MUTANTS_RUNNER_VAR)="$(MUTANTS_RUNNER)" \
		$(CARGO) mutants --in-place --no-shuffle --timeout $(MUTANTS_TIMEOUT) \
			--file $$file --output $$out \
			--cargo-arg=--bin=agent -- -- $$filters || status=1; \
	done; exit $$status

clean:
	$(CARGO) clean
