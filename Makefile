# cni-chain: build, test, demo and install the plugins. Every target installs what it needs itself.

SHELL := /bin/bash
CNI_BIN_DIR ?= /opt/cni/bin
DESTDIR ?=
PLUGINS := ptp host-local linkgroup masquerade egress-v4 egress-v6 policy-route
# The operator's tool is no CNI plugin: it goes on PATH.
TOOL := cni-chain
TOOL_BIN_DIR ?= /usr/local/bin
# Kernel tests make namespaces and processes: keep parallelism modest on small machines.
TEST_THREADS ?= 4
APT_PACKAGES := containernetworking-plugins iproute2 iputils-ping nftables iptables python3 gcc libc6-dev curl \
	ca-certificates
# The Rust a machine without one gets (scripts/install-rust.sh, with rustup into ~/.cargo).
RUST_VERSION := 1.95.0
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all build deps e2e-deps test e2e lint fuzz bench demo install uninstall release release-bins hot-text image clean

all: build

# The runtimes the end-to-end tests drive (Podman needs runc here; busybox makes the images; grpcio for
# scripts/e2e/cri.py, the CRI client).
E2E_PACKAGES := podman runc busybox-static containerd python3-grpcio

# Installs the Debian packages of $(1) that are missing.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

# Debian packages the tests and demo use (reference plugins for IPAM and comparison, ip, ping).
deps:
	$(call apt_install,$(APT_PACKAGES))
	@bash scripts/install-rust.sh $(RUST_VERSION)
	@cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

# Only the plugins and the tool: the tests, the bench and the fuzz targets build what else they need.
build:
	cargo build --release --locked $(PLUGINS:%=-p %) -p $(TOOL)

lint:
	cargo fmt --check
	cargo clippy --all-targets --locked -- -D warnings

# The real runtimes the end-to-end tests drive (cnitool is built from Debian's source package).
e2e-deps: deps
	$(call apt_install,$(E2E_PACKAGES))
	bash scripts/e2e/cnitool.sh

# Unit and property tests, the kernel integration tests (hostile input, faults, load and soak among them),
# the end-to-end tests (as root: they create namespaces), then the fuzz targets for a bounded time.
test: deps lint build release e2e-deps image
	cargo test --workspace --release --locked -- --test-threads $(TEST_THREADS)
	$(MAKE) fuzz

# Fuzz the parsing of configs, prevResults, results and the CNI_* environment with libFuzzer, each target
# FUZZ_SECONDS long, from the seed corpus in fuzz/seeds (real configs and results). libFuzzer's coverage
# flags are -Z options: RUSTC_BOOTSTRAP lets the stable toolchain, the one a fresh machine has, take them.
FUZZ_TARGETS := network_config result_conversion cni_env
FUZZ_SECONDS ?= 45
CARGO_FUZZ_VERSION := 0.13.2
fuzz:
	@cargo fuzz --version 2>/dev/null | grep -q $(CARGO_FUZZ_VERSION) || cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none -O
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t && \
		RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 2>&1 | \
			grep -E '^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|==|SUMMARY|thread .* panicked)' ; \
		test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

# Only the end-to-end tests: real runtimes drive the shipped conflists.
E2E_TESTS := e2e_cnitool e2e_podman e2e_containerd e2e_install
e2e: deps build e2e-deps image
	cargo test --release --locked -p integration $(E2E_TESTS:%=--test %) -- --test-threads $(TEST_THREADS)

# Latency of our chains against the reference plugins, growth with live pods, floor, start costs, footprint, and
# whether the speed aims are met: bench/RESULTS.md, bench/results.json and bench/growth.png (BENCH_FLAGS=--quick for a
# short run). Our plugins are measured as released, the static binaries of release-bins, and the floor is built alike.
BENCH_PACKAGES := python3-matplotlib binutils busybox-static gcc libc6-dev musl-tools
BENCH_FLAGS ?=
bench: deps release-bins
	$(call apt_install,$(BENCH_PACKAGES))
	cargo build --release --locked -p bench
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" cargo build --profile dist --locked --target $(TRIPLE) -p bench \
		--bin cni-chain-floor
	CNI_CHAIN_BIN_DIR=$(CURDIR)/$(RELEASE_BIN) CNI_CHAIN_FLOOR=$(CURDIR)/$(RELEASE_BIN)/cni-chain-floor \
		target/release/cni-chain-bench --out bench $(BENCH_FLAGS)
	/usr/bin/python3 bench/plot.py bench/results.json bench/growth.png
	@echo "see bench/RESULTS.md and bench/growth.png"

demo: deps build
	bash scripts/demo.sh

# Each plugin is written beside its final name, then renamed over it: a runtime executing a plugin meanwhile runs
# the old one or the new one, never half of one.
install: deps build
	install -d $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(TOOL_BIN_DIR)
	for p in $(PLUGINS:%=$(CNI_BIN_DIR)/%) $(TOOL_BIN_DIR)/$(TOOL); do f=$(DESTDIR)$$p; \
		install -m 0755 target/release/$$(basename $$p) $$(dirname $$f)/.$$(basename $$p).new && \
		mv -f $$(dirname $$f)/.$$(basename $$p).new $$f || exit 1; \
	done

# Removes the plugins install wrote: a file of the same name that is not ours (say, a reference plugin put there
# since) stays.
uninstall:
	for p in $(PLUGINS:%=$(CNI_BIN_DIR)/%) $(TOOL_BIN_DIR)/$(TOOL); do f=$(DESTDIR)$$p; n=$$(basename $$p); \
		if [ -x "$$f" ] && "$$f" --version 2>/dev/null | head -1 | grep -q "^$$n .*(cni-chain"; then rm -f "$$f"; fi; \
	done

# Static, stripped binaries (musl: they run on any distribution and FROM scratch) and the conflists,
# in the layout of the reference plugins' tarball, with a SHA-256 checksum file:
# dist/cni-chain-linux-<arch>-v<version>.tgz and .tgz.sha256. musl, not glibc's crt-static: glibc's start-up asks
# the CPU for its features and caches (CPUID), which traps to the hypervisor on a VM: 0.25 ms of every call here.
# Not position-independent, as the reference's Go binaries: a static-pie relocates itself at every start (0.1 ms).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH := $(shell uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
TRIPLE := $(shell uname -m)-unknown-linux-musl
RELEASE_NAME := cni-chain-linux-$(ARCH)-v$(VERSION)
RELEASE_BIN := target/$(TRIPLE)/dist
# Linked with build/hot-text.ld: the code the plugins run on their calls, side by side at the start of .text, so that
# a call maps a few 64 KiB windows of it rather than every one (`make hot-text` writes it from the current code).
HOT_TEXT := build/hot-text.ld
# And with build/arena-last.ld: the allocator's 8 MiB region after the few variables libc and std write at every start.
RELEASE_RUSTFLAGS := -C relocation-model=static -C link-arg=-Wl,-T,$(CURDIR)/$(HOT_TEXT) \
	-C link-arg=-Wl,-T,$(CURDIR)/build/arena-last.ld
release-bins: deps
	@rustup target list --installed | grep -qx $(TRIPLE) || rustup target add $(TRIPLE)
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" cargo build --profile dist --locked --target $(TRIPLE) \
		$(PLUGINS:%=-p %) -p $(TOOL) -p cni-chain-install

# Traces each plugin's calls (an ADD run again, a chain's ADD and DEL, VERSION) one instruction at a time in throwaway
# namespaces, on a build of the release binaries with the linker's maps, and writes $(HOT_TEXT) again. The same
# profile as release-bins (stripped too): its settings are in the symbols' hashes, which the script names.
HOT_TEXT_BUILD := target/hot-text
hot-text: deps
	@rustup target list --installed | grep -qx $(TRIPLE) || rustup target add $(TRIPLE)
	rm -rf $(HOT_TEXT_BUILD)/maps && mkdir -p $(HOT_TEXT_BUILD)/maps
	CARGO_TARGET_DIR=$(HOT_TEXT_BUILD) \
		RUSTFLAGS="$(RELEASE_RUSTFLAGS) -C link-arg=-Wl,-Map=$(CURDIR)/$(HOT_TEXT_BUILD)/maps/" \
		cargo build --profile dist --locked --target $(TRIPLE) $(PLUGINS:%=-p %)
	cargo build --release --locked -p bench
	CNI_CHAIN_BIN_DIR=$(CURDIR)/$(HOT_TEXT_BUILD)/$(TRIPLE)/dist \
		target/release/cni-chain-bench --hot-text $(HOT_TEXT_BUILD)/maps --out $(HOT_TEXT)

release: release-bins
	rm -rf dist/$(RELEASE_NAME) && mkdir -p dist/$(RELEASE_NAME)/conflists
	cp $(PLUGINS:%=$(RELEASE_BIN)/%) $(RELEASE_BIN)/$(TOOL) LICENSE README.md dist/$(RELEASE_NAME)/
	cp conflists/*.conflist dist/$(RELEASE_NAME)/conflists/
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@$$(git log -1 --format=%ct 2>/dev/null || echo 0) \
		-C dist/$(RELEASE_NAME) -czf dist/$(RELEASE_NAME).tgz .
	cd dist && sha256sum $(RELEASE_NAME).tgz > $(RELEASE_NAME).tgz.sha256
	rm -rf dist/$(RELEASE_NAME)
	@echo "dist/$(RELEASE_NAME).tgz: $$(cat dist/$(RELEASE_NAME).tgz.sha256 | cut -d' ' -f1)"

# The DaemonSet's image (deploy/kubernetes): FROM scratch, the static plugins and the containerd template under
# /cni-chain/host, and the installer that copies them to the host. Built by Podman in a throwaway store (nothing
# is pulled, the machine's images stay as they were) into an OCI archive: dist/cni-chain-image-<arch>-v<version>.tar,
# for `podman load`, `ctr -n k8s.io images import` or a push to your registry.
IMAGE := localhost/cni-chain:v$(VERSION)
IMAGE_ARCHIVE := dist/cni-chain-image-$(ARCH)-v$(VERSION).tar
image: release-bins
	$(call apt_install,podman)
	@set -e; work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; \
	mkdir -p $$work/context/host/opt/cni/bin $$work/context/host/etc/cni/cni-chain; \
	cp $(PLUGINS:%=$(RELEASE_BIN)/%) $$work/context/host/opt/cni/bin/; \
	cp deploy/containerd/cni-conf-template.json $$work/context/host/etc/cni/cni-chain/; \
	cp $(RELEASE_BIN)/cni-chain-install $$work/context/; \
	podman="podman --root $$work/storage --runroot $$work/run --tmpdir $$work/tmp --storage-driver vfs"; \
	$$podman build --quiet --network none --pull=never -t $(IMAGE) -f deploy/Containerfile $$work/context >/dev/null; \
	rm -f $(IMAGE_ARCHIVE); mkdir -p dist; \
	$$podman save --quiet --format oci-archive -o $(IMAGE_ARCHIVE) $(IMAGE); \
	$$podman rmi --all --force >/dev/null; \
	echo "$(IMAGE_ARCHIVE): $(IMAGE)"

clean:
	cargo clean
	rm -rf dist
