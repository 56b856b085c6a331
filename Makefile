# eeasr — the commands people run. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/eeasr
CORPUS ?= $(CACHE)/corpus
HOURS ?= 21
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Debian packages: TTS engines and voices, text sources, audio tools, gcc for the firmware's native C tests,
# PortAudio and a user-run PulseAudio for the microphone path (and its test).
APT_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
	fortunes fortune-mod wordnet-base diatheke sword-text-web jargon-text flac pocketsphinx-testdata \
	build-essential libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils

.PHONY: help setup apt-deps demo data train model bench firmware-check test clean-venv

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: $(VENV)/.installed  ## create .venv with the CPU build of torch and eeasr installed editable

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, from the local CPU wheel: otherwise pip resolves a CUDA build of several GB.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,convert,host,dev]"
	touch $@

apt-deps:  ## install the Debian packages the corpus and tests need (only the missing ones)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# The demo's audio: held-out synthetic voices bundled in assets/demo and real recordings from Debian's
# pocketsphinx-testdata; assets/demo/manifest.jsonl holds the transcripts of both.
PS_DATA := /usr/share/pocketsphinx/test/data
DEMO_AUDIO := $(sort $(wildcard assets/demo/*.flac)) \
	$(PS_DATA)/librivox/sense_and_sensibility_01_austen_64kb-0870.wav \
	$(PS_DATA)/librivox/sense_and_sensibility_01_austen_64kb-0880.wav \
	$(PS_DATA)/librivox/sense_and_sensibility_01_austen_64kb-0930.wav \
	$(PS_DATA)/cards/001.wav $(PS_DATA)/cards/005.wav

demo: apt-deps setup  ## the whole edge-cloud split on this machine: bundled model and audio, simulated device, local server
	$(VENV)/bin/eeasr-host stream --wav $(DEMO_AUDIO) --refs assets/demo/manifest.jsonl --log $(CACHE)/demo.jsonl

data: setup apt-deps  ## synthesize the default corpus (HOURS=21 of training speech) and cache its features
	$(VENV)/bin/eeasr-data synth --hours $(HOURS) --out $(CORPUS)
	$(VENV)/bin/eeasr-data features --corpus $(CORPUS)

train: setup  ## train the default model (configs/default.yaml; ~2.2 h on 2 cores; rerun to resume)
	$(VENV)/bin/eeasr-train fit --config configs/default.yaml

model: setup  ## evaluate the trained default run and export it to models/default
	$(VENV)/bin/eeasr-train export $(CACHE)/runs/default --out models/default
	$(VENV)/bin/eeasr-train eval models/default --out models/default/results-test.md
	$(VENV)/bin/eeasr-train eval models/default --real --out models/default/results-real.md
	$(VENV)/bin/eeasr-train exits models/default --out models/default/exits

# The benchmarks, one script each (bench/*.py --help says what each measures):
#   bench/window_table.py  flash, arena, MACs and bandwidth per window W (updates docs/decisions/0002)
#   bench/int8_wer.py      WER of every int8 device exit under TFLM vs float on the test set (bench/out/int8_wer.*)
#   bench/split_sweep.py   EXITS=2 split: system WER, share ended on the device, uplink bytes vs the exit threshold
#   bench/split_latency.py end of audio -> text latency and uplink bytes of `eeasr-host stream` in simulation
#   bench/server_load.py   `eeasr-host serve` throughput and p50/p95 latency at 1, 8 and 32 concurrent clients
# Not run here: they need a trained I3D run or a converted Conformer-AED bundle instead of the default model.
#   bench/gated_cost.py --run RUN       I3D: device modules, MACs, TFLM time, handoff bytes, share on the device
#                                       and WER per gate threshold beta (bench/out/gated_cost.*)
#   bench/aed_server_cost.py --bundle DIR   AED: server time per window (p50/p95), tokens and WER of greedy
#                                       CTC, attention beam and attention + LM (bench/out/aed_server_cost.*)
bench: setup  ## run the benchmarks under bench/ (bench/out/; slow: tens of minutes)
	$(PY) bench/window_table.py
	$(PY) bench/int8_wer.py --out bench/out
	$(PY) bench/split_sweep.py --out bench/out
	$(PY) bench/split_latency.py --out bench/out
	$(PY) bench/server_load.py --out bench/out

firmware-check:  ## build the firmware's C core with gcc, run its sanitizer unit tests and the test vectors
	@test -x $(PY) || { echo "$(PY) not found: run make setup first"; exit 1; }
	$(MAKE) -C firmware/native check PYTHON=$(abspath $(PY))

test: apt-deps setup  ## run the test suite
	$(PY) -m pytest -q

clean-venv:  ## remove .venv
	rm -rf $(VENV)

include firmware/flash.mk
