# The two commands: `make demo` and `make test`. Everything they need is installed by the
# project's own scripts (tests/local-stack/install.sh), into .local/ where possible.
SHELL := bash
.DEFAULT_GOAL := help
.PHONY: help setup build up down demo test lint bench release clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## install the local stack's tools (moto, cargo-lambda) into .local/
	tests/local-stack/install.sh

build: ## build every crate
	cargo build --workspace

up: ## start the local stack (moto + vend service on 127.0.0.1), write .local/env
	tests/local-stack/up.sh

down: ## stop exactly what `make up` started
	tests/local-stack/down.sh

demo: ## enroll a device end to end on the local stack and verify the result
	tests/local-stack/demo.sh

test: ## install, lint, and run every test (unit, integration on the local stack, infra)
	tests/run.sh

lint: ## rustfmt and clippy, warnings as errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: ## benchmarks (ratios measured in one run)
	tests/bench.sh

release: setup ## build the Lambda bootstraps with cargo lambda (x86_64 here; --arm64 to deploy)
	PATH="$(CURDIR)/.local/venv/bin:$$PATH" cargo lambda build --release -p vend

clean: down
	rm -rf .local target infra/node_modules infra/dist infra/cdk.out
