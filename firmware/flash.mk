# The firmware's make targets (included by the top Makefile). firmware/README.md explains them.
#   make flash DEVICE=esp32s3 EXITS=2 [PORT=/dev/ttyACM0] [MODEL=models/default] [BOARD=devkitc-n16r8|box3]
#   make flash DEVICE=sim EXITS=2         the simulated device (eeasr-host device-sim) on the same bundle
#   make flash-model EXITS=2 [PORT=...]   only the model partition: no ESP-IDF, no app rebuild
#   make firmware-build EXITS=2           build the app and the model image, do not flash
#   make firmware-budget                  flash, arena, latency for EXITS = 1..N against the ESP32-S3's limits
# BUNDLE=DIR uses an existing bundle instead of converting MODEL; converted bundles are cached in FW_CACHE.
DEVICE ?= esp32s3
EXITS ?= 2
MODEL ?= models/default
BOARD ?= devkitc-n16r8
PORT ?=
BUNDLE ?=
FW_CACHE ?= $(CACHE)/firmware
ESPTOOL_ARGS ?=
FIRMWARE_PY = $(PY) -m eeasr.convert.firmware_flash
FIRMWARE_ARGS = --model $(MODEL) --cache $(FW_CACHE) $(if $(BUNDLE),--bundle $(BUNDLE))

.PHONY: flash flash-model firmware-build firmware-budget

flash: setup  ## convert MODEL for EXITS, check the budget, build and flash the ESP32-S3 (DEVICE=sim: simulate)
	$(FIRMWARE_PY) flash --device $(DEVICE) --exits $(EXITS) --board $(BOARD) $(FIRMWARE_ARGS) $(if $(PORT),--port $(PORT))

flash-model: setup  ## write only the model partition of an ESP32-S3 flashed before (esptool; no ESP-IDF needed)
	$(FIRMWARE_PY) flash-model --exits $(EXITS) $(FIRMWARE_ARGS) $(if $(PORT),--port $(PORT)) \
		$(if $(ESPTOOL_ARGS),--esptool-args "$(ESPTOOL_ARGS)")

firmware-build: setup  ## as flash, without flashing: firmware/build-BOARD/ holds the app, bootloader and partition table
	$(FIRMWARE_PY) build --exits $(EXITS) --board $(BOARD) $(FIRMWARE_ARGS)

firmware-budget: setup  ## device budget for EXITS = 1..N (flash, arena, where it lives, modelled latency)
	$(FIRMWARE_PY) table $(FIRMWARE_ARGS)
