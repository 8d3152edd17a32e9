# Sourced by the CI gate scripts: copy_tree SRC DEST copies the project's
# source tree (no build artefacts, venvs or VCS data), so a gate can build its
# own extension (another Python, a sanitizer build) without touching SRC's.
copy_tree() {
    local src=$1 dest=$2
    mkdir -p "$dest"
    tar -C "$src" \
        --exclude=./.git --exclude='./.ci-*' --exclude=./build \
        --exclude='*.so' --exclude='*.o' --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache \
        -cf - . | tar -C "$dest" -xf -
}
