#!/usr/bin/env bash
# The Debian packages the test suite reads, installed where missing: the one home of this step, run by
# `make install`, `make test` and `.ci/run`. Cheap when everything is there (two file checks, no apt).
#   postgresql             tests/study/test_postgres.py starts a server of its own (initdb, pg_ctl)
#   dataset-fashion-mnist  the real Fashion-MNIST files under /usr/share/datasets/fashion-mnist
# As root with apt-get: one `apt-get update`, then each missing package. Otherwise one line per package
# saying what to run, and exit 0: `make train` needs neither, and the tests that do say so themselves.
set -uo pipefail

declare -A without=([postgresql]="tests/study/test_postgres.py will skip"
                    [dataset-fashion-mnist]="tests/data/test_fashion_mnist.py and tests/data/test_datamodules.py will fail")
missing=()
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    missing+=(dataset-fashion-mnist)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing Debian packages: ${missing[*]}; run \`sudo apt-get install ${missing[*]}\` (without them:" \
         "$(for p in "${missing[@]}"; do printf '%s; ' "${without[$p]}"; done | sed 's/; $//'))"
    exit 0
fi
echo "installing Debian's ${missing[*]} for the tests (apt-get, once)"
if ! apt-get update -qq; then
    echo "apt-get update failed: ${missing[*]} not installed; run \`apt-get install ${missing[*]}\` by hand"
    exit 0
fi
for package in "${missing[@]}"; do
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null ||
        echo "apt-get could not install $package: ${without[$package]}"
done
exit 0
