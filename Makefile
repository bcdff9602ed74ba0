# crust: build, test and run the CRI runtime.
#
#   make run    install runc and the CNI plugins if missing, build, run crustd
#   make test   install what the tests need if missing, run unit and end-to-end tests
#   make bench  measure crustd against containerd and bare runc (see test/src/bench), write BENCHMARKS.md
#   make conformance  critest, a standalone kubelet and crictl's streams (from ../shared/tools) against crustd
#   make image  the installer image (crustd, crust-shim, their libraries, config, unit) as an OCI layout in target/image
#   make image-push REGISTRY=host[:port][/path]  push it with skopeo as $(REGISTRY)/crust:<version>

CARGO     ?= cargo
PREFIX    ?= /usr/local
RELEASE   := target/release
DEBUG     := target/debug
# The workspace version ([workspace.package] in Cargo.toml): the image's tag.
VERSION   := $(shell sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)

# Debian packages: to build, to run, and to test.
BUILD_PKGS := protobuf-compiler gcc
RUN_PKGS   := runc containernetworking-plugins iptables
TEST_PKGS  := docker-registry busybox-static apache2-utils openssl iputils-ping skopeo
# What `make image-push` pushes with.
IMAGE_PKGS := skopeo
# What `make conformance` needs besides the test packages: xz to unpack the
# clients, the host's pgrep (procps) and ipcs (util-linux) for critest's images,
# and util-linux's ipcmk, which critest runs on the host.
CONFORMANCE_PKGS := xz-utils procps util-linux
# youki, the second runtime handler of the default config, from crates.io: its
# features are opt-in (v1 and v2 cgroups, seccomp, which needs libseccomp's
# headers and pkg-config to build).
YOUKI_VERSION  := 0.7.0
YOUKI_FEATURES := v1,v2,seccomp
YOUKI_PKGS     := libseccomp-dev pkg-config
# The peer `make bench` compares crust with, and skopeo, the reference point of the
# big-image pull (both optional: the report says if one is missing).
BENCH_PKGS := containerd skopeo

# make bench knobs: pods per runtime, cold pulls per image, rounds of the big-image
# pulls (5 layers, ~100 MiB; 0 skips them), where the JSON goes.
SOAK_ROUNDS ?= 10
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := reference manifest config hosts_toml layer_tar cri_log cni
BENCH_N     ?= 30
BENCH_PULLS ?= 15
BENCH_BIG_PULLS ?= 5
BENCH_JSON  ?= $(CURDIR)/target/crust-bench/report.json
# The report the repository keeps: targets, every figure, machine, date, command.
BENCH_MARKDOWN ?= $(CURDIR)/BENCHMARKS.md

# make image: where the OCI layout goes and the repository name it is pushed
# as ($(REGISTRY)/$(IMAGE_NAME):$(VERSION)); extra `skopeo copy` flags, e.g.
# --dest-tls-verify=false for a plain-HTTP registry, or --dest-creds USER:PASS.
# Entries carry mtime $SOURCE_DATE_EPOCH (0 when unset): the same binaries
# give the same digest.
IMAGE_DIR    ?= $(CURDIR)/target/image
IMAGE_NAME   ?= crust
REGISTRY     ?=
SKOPEO_FLAGS ?=

# Tests the end-to-end binary runs at once. They mostly wait on crustd, runc
# and timers: on 2 cores 4 threads finish the suite in about 110 s with the
# machine 2/3 busy, 2 threads take about 175 s, 6 gain little more (about 105 s).
E2E_THREADS ?= 4

# make conformance: where the real clients come from (xz-compressed, as in
# ../shared/tools; set TOOLS to use other copies) and where they are unpacked.
TOOLS       ?= $(CURDIR)/../shared/tools
TOOLS_DIR   := $(CURDIR)/target/tools
CRITEST     ?= $(TOOLS_DIR)/critest
KUBELET     ?= $(TOOLS_DIR)/kubelet
CRICTL      ?= $(TOOLS_DIR)/crictl
CONFORMANCE_DIR := $(CURDIR)/target/conformance
# Debian's dynamically linked busybox, the base of critest's images (its shell
# finds applets in PATH, unlike busybox-static's; see test/src/conformance/images.rs).
IMAGE_BUSYBOX := $(CONFORMANCE_DIR)/busybox/bin/busybox
# critest specs skipped by name, each for a reason no runtime can help here;
# any other failure not on the expected-failure list of test/tests/e2e/critest.rs
# fails `make conformance`:
# - "public image with digest": pinned to an upstream digest that no offline
#   build can have, so it fails on every runtime on this machine.
# (The AppArmor specs skip themselves on a host without AppArmor.)
CRITEST_SKIP ?= public image with digest should be pulled and removed

.PHONY: all build release run first-network test unit e2e bench lint install conformance soak fuzz image image-push require-registry deps-build deps-run deps-test deps-youki deps-bench deps-conformance deps-image youki-build-deps

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

deps-test: deps-run deps-youki
	$(call apt_install,$(TEST_PKGS))

# Installs youki into $(PREFIX)/bin when no youki is on PATH.
deps-youki: deps-build
	@if ! command -v youki >/dev/null; then \
		$(MAKE) --no-print-directory youki-build-deps && \
		$(CARGO) install youki --locked --version $(YOUKI_VERSION) --features $(YOUKI_FEATURES) --root $(PREFIX); \
	fi

youki-build-deps:
	$(call apt_install,$(YOUKI_PKGS))

deps-conformance: deps-test
	$(call apt_install,$(CONFORMANCE_PKGS))

deps-image:
	$(call apt_install,$(IMAGE_PKGS))

# A failed install of the peer is not fatal: the report then says containerd was not run.
deps-bench: deps-test
	-$(call apt_install,$(BENCH_PKGS))

build: deps-build
	$(CARGO) build --workspace

release: deps-build
	$(CARGO) build --release -p crust-cri -p crust-shim

run: deps-run release first-network
	$(RELEASE)/crustd

# The first run's pod network: manifests/cni/10-crust.conflist (bridge crust0,
# 10.85.0.0/16, portmap, loopback), installed only where no network config is.
CNI_CONF_DIR ?= /etc/cni/net.d
first-network:
	@if find $(CNI_CONF_DIR) -maxdepth 1 \( -name '*.conflist' -o -name '*.conf' -o -name '*.json' \) 2>/dev/null | grep -q .; then \
		echo "keeping the network config in $(CNI_CONF_DIR)"; \
	else \
		install -D -m 0644 manifests/cni/10-crust.conflist $(CNI_CONF_DIR)/10-crust.conflist && \
		echo "no network config in $(CNI_CONF_DIR): installed manifests/cni/10-crust.conflist (bridge crust0, 10.85.0.0/16)"; \
	fi

# The installer image from the release binaries, written by crust-image (test/src/installer_image.rs)
# as an OCI layout: no Docker needed. `skopeo inspect oci:$(IMAGE_DIR):$(VERSION)` shows it.
image: release
	$(CARGO) run -q -p crust-e2e --bin crust-image -- --bin-dir $(CURDIR)/$(RELEASE) --version $(VERSION) \
		--manifests $(CURDIR)/manifests --out $(IMAGE_DIR)

image-push: require-registry image deps-image
	skopeo copy $(SKOPEO_FLAGS) oci:$(IMAGE_DIR):$(VERSION) docker://$(REGISTRY)/$(IMAGE_NAME):$(VERSION)

require-registry:
	@if [ -z "$(REGISTRY)" ]; then \
		echo "make image-push: say where to push, e.g. make image-push REGISTRY=registry.example.com/team (pushes $(IMAGE_NAME):$(VERSION) there)" >&2; \
		exit 1; \
	fi

unit: deps-build
	$(CARGO) test --workspace --exclude crust-e2e

e2e: deps-test build
	CRUST_BIN_DIR=$(CURDIR)/$(DEBUG) $(CARGO) test -p crust-e2e --no-fail-fast -- --test-threads=$(E2E_THREADS)

test: deps-test build
	$(CARGO) test --workspace --exclude crust-e2e
	CRUST_BIN_DIR=$(CURDIR)/$(DEBUG) $(CARGO) test -p crust-e2e --no-fail-fast -- --test-threads=$(E2E_THREADS)

bench: deps-bench release
	$(CARGO) build --release -p crust-e2e --bin crust-bench
	CRUST_BIN_DIR=$(CURDIR)/$(RELEASE) CRUST_BENCH_N=$(BENCH_N) CRUST_BENCH_PULLS=$(BENCH_PULLS) \
		CRUST_BENCH_BIG_PULLS=$(BENCH_BIG_PULLS) CRUST_BENCH_JSON=$(BENCH_JSON) \
		CRUST_BENCH_MARKDOWN=$(BENCH_MARKDOWN) $(RELEASE)/crust-bench

# Each target for FUZZ_SECONDS from the seeds in fuzz/corpus (new inputs go
# to fuzz/work, crashes to fuzz/artifacts); needs nightly and cargo-fuzz.
fuzz:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p work/$$t && \
		cargo +nightly fuzz run $$t work/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

soak: deps-test build
	CRUST_BIN_DIR=$(CURDIR)/$(DEBUG) CRUST_SOAK_ROUNDS=$(SOAK_ROUNDS) \
		$(CARGO) test -p crust-e2e --test e2e -- --ignored --nocapture load::soak

conformance: deps-conformance build $(CRITEST) $(KUBELET) $(CRICTL) $(IMAGE_BUSYBOX)
	CRUST_BIN_DIR=$(CURDIR)/$(DEBUG) CRUST_CRITEST=$(CRITEST) CRUST_KUBELET=$(KUBELET) \
		CRUST_CRICTL=$(CRICTL) CRUST_CONFORMANCE_BUSYBOX=$(IMAGE_BUSYBOX) \
		CRUST_CRITEST_SKIP="$(CRITEST_SKIP)" \
		$(CARGO) test -p crust-e2e --test e2e --no-fail-fast -- \
		--ignored --test-threads=1 --nocapture crictl:: critest:: kubelet::

$(TOOLS_DIR)/%: $(TOOLS)/%.xz
	@mkdir -p $(TOOLS_DIR)
	xz -dc $< > $@.tmp && chmod 0755 $@.tmp && mv $@.tmp $@

$(IMAGE_BUSYBOX):
	@mkdir -p $(CONFORMANCE_DIR)
	cd $(CONFORMANCE_DIR) && rm -rf busybox busybox_*.deb && \
		{ apt-get download busybox 2>/dev/null || { apt-get update -qq && apt-get download busybox; }; } && \
		dpkg-deb -x busybox_*.deb busybox

lint: deps-build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

install: release
	install -D -m 0755 $(RELEASE)/crustd $(DESTDIR)$(PREFIX)/bin/crustd
	install -D -m 0755 $(RELEASE)/crust-shim $(DESTDIR)$(PREFIX)/bin/crust-shim
	install -D -m 0644 manifests/crust.service $(DESTDIR)/etc/systemd/system/crust.service
