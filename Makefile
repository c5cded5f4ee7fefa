# Two entry points for users: `make demo` and `make test`. Both install what they need first.
PY        ?= $(shell command -v python3.11 || command -v python3)
VENV      := .venv
VPY       := $(VENV)/bin/python
BUILD     := build
BPF_SRC   := $(wildcard bpf/*.bpf.c)
# Programs that also build for XDP from the same source (bpf/lib/pkt_ctx.h): X_xdp.bpf.o
BPF_XDP   := switch agent
BPF_OBJ   := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRC)) \
             $(patsubst %,$(BUILD)/bpf/%_xdp.bpf.o,$(BPF_XDP))
BPF_HDR   := $(wildcard bpf/lib/*.h) $(wildcard bpf/*.h)
ARCH_INC  := /usr/include/$(shell uname -m)-linux-gnu
BPF_CFLAGS ?= -O2 -g -Wall -Werror -target bpf -I bpf -I bpf/lib -I $(ARCH_INC)
PROTO_SRC := $(wildcard proto/miresga/_proto/*.proto)
PROTO_OUT := src/miresga/_proto

.PHONY: all deps sysdeps venv bpf proto test test-fast demo bench clean

all: deps bpf proto

deps: sysdeps venv

sysdeps:
	@bash scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	@test -n "$(PY)" || { echo "need Python 3.11 (python3.11 or python3 on PATH)"; exit 1; }
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

bpf: $(BPF_OBJ)

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HDR) | sysdeps
	@mkdir -p $(dir $@)
	clang $(BPF_CFLAGS) -c $< -o $@

$(BUILD)/bpf/%_xdp.bpf.o: bpf/%.bpf.c $(BPF_HDR) | sysdeps
	@mkdir -p $(dir $@)
	clang $(BPF_CFLAGS) -DMIRESGA_XDP -c $< -o $@

proto: $(PROTO_OUT)/.built

$(PROTO_OUT)/.built: $(PROTO_SRC) | venv
	@mkdir -p $(PROTO_OUT)
	@touch $(PROTO_OUT)/__init__.py
	$(if $(PROTO_SRC),$(VPY) -m grpc_tools.protoc -I proto --python_out=src --grpc_python_out=src $(PROTO_SRC))
	touch $@

test: deps bpf proto
	$(VENV)/bin/pytest -q -ra

demo: deps bpf proto
	$(VENV)/bin/miresga demo

bench: deps bpf proto
	$(VENV)/bin/miresga bench --out bench-out

clean:
	rm -rf $(BUILD) $(PROTO_OUT)
