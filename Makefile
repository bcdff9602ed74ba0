# crust: build, test and run the CRI runtime.
#
#   make run    install runc and the CNI plugins if missing, build, run crustd
#   make test   install what the tests need if missing, run unit and end-to-end tests
#   make bench  measure crustd against bare runc (see test/benches)

CARGO     ?= cargo
PREFIX    ?= /usr/local
RELEASE   := target/release
DEBUG     := target/debug

# Debian packages: to build, to run, and to test.
BUILD_PKGS := protobuf-compiler gcc
RUN_PKGS   := runc containernetworking-plugins iptables
TEST_PKGS  := docker-registry busybox-static

.PHONY: all build release run test unit e2e bench lint install deps-build deps-run deps-test

all: build

# Installs the packages in $(1) that are not installed yet (apt-get update first).
define apt_install
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-build:
	$(call apt_install,$(BUILD_PKGS))

deps-run: deps-build
	$(call apt_install,$(RUN_PKGS))

deps-test: deps-run
	$(call apt_install,$(TEST_PKGS))

build: deps-build
	$(CARGO) build --workspace

release: deps-build
	$(CARGO) build --release -p crust-cri -p crust-shim

run: deps-run release
	$(RELEASE)/crustd

unit: deps-build
	$(CARGO) test --workspace --exclude crust-e2e

e2e: deps-test build
	CRUST_BIN_DIR=$(CURDIR)/$(DEBUG) $(CARGO) test -p crust-e2e -- --test-threads=2

test: deps-test build
	$(CARGO) test --workspace --exclude crust-e2e
	CRUST_BIN_DIR=$(CURDIR)/$(DEBUG) $(CARGO) test -p crust-e2e -- --test-threads=2

bench: deps-test release
	CRUST_BIN_DIR=$(CURDIR)/$(RELEASE) $(CARGO) run --release -p crust-e2e --bin crust-bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

install: release
	install -D -m 0755 $(RELEASE)/crustd $(DESTDIR)$(PREFIX)/bin/crustd
	install -D -m 0755 $(RELEASE)/crust-shim $(DESTDIR)$(PREFIX)/bin/crust-shim
	install -D -m 0644 manifests/crust.service $(DESTDIR)/etc/systemd/system/crust.service
