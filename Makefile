# Thin wrapper over CMake: the two commands a newcomer needs, and a few more.
#   make demo   install what is missing, build, run the demo backend + proxy
#               (on a system without make: bash scripts/setup.sh && make demo)
#   make test   install what is missing, build (plain and ASan+UBSan), run every test
JOBS ?= $(shell nproc)
BUILD ?= build
ASAN_BUILD ?= build-asan

.PHONY: all setup build build-release demo test test-plain test-asan test-valgrind format clean

all: build

setup:
	@bash scripts/setup.sh

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

# Only the two programs the demo runs: a first `make demo` on a fresh machine
# should not wait for the test programs.
demo: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j$(JOBS) --target switchyard sy-demo
	@bash scripts/demo.sh $(BUILD)

test:
	@bash scripts/setup.sh --tests
	@$(MAKE) --no-print-directory build-release test-plain test-asan test-valgrind

# Release (-O3) as the container image builds it: GCC finds other -Werror
# warnings at -O3 than at -O2, so it must build too.
build-release:
	cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build-release -j$(JOBS)

# The soak test runs 60 s here (20 s by default, and under ASan).
test-plain: build
	cd $(BUILD) && SY_SOAK_SECONDS=60 ctest --output-on-failure -j$(JOBS)

test-asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSY_SANITIZE=ON >/dev/null
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && SY_SKIP_CONTAINER=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j$(JOBS)

# memcheck over a representative integration subset (about 7 minutes).
test-valgrind: build
	SY_BUILD_DIR=$(CURDIR)/$(BUILD) sh scripts/valgrind-suite.sh

format:
	clang-format -i src/*.c include/switchyard/*.h tests/unit/*.c demo/*.c bench/*.c 2>/dev/null || true

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-release
