# A thin wrapper over build.sh / meson.
.PHONY: all build serve check bench fuzz clean

all: build

build:
	./build.sh build

serve:
	./build.sh serve

check:
	./build.sh check

bench:
	./build.sh bench

fuzz:
	./build.sh fuzz $(FUZZ_SECONDS)

clean:
	rm -rf build build-asan build-tsan build-ucontext
