#!/usr/bin/env bash
# Debian packages that `make test` and `make book` need: Chromium + ChromeDriver (the book's browser test), MathJax
# (the offline book's local copy), Fashion-MNIST (the datasets chapter reads Debian's copy), and python3-venv when
# Debian's own python3 makes the virtualenv. Installs only what is missing. When it cannot (not root, no apt-get,
# apt-get failed, or a package installed but still not found) it says what is missing and exits with status 1.
set -uo pipefail
missing() {
  command -v chromium >/dev/null || echo chromium
  command -v chromedriver >/dev/null || echo chromium-driver
  [ -f /usr/share/javascript/mathjax/MathJax.js ] || echo libjs-mathjax
  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || echo dataset-fashion-mnist
  [ "$(command -v python3)" != /usr/bin/python3 ] || dpkg -s python3-venv >/dev/null 2>&1 || echo python3-venv
}
fail() { echo "tools/system_packages.sh: $*" >&2; exit 1; }
mapfile -t need < <(missing)
[ ${#need[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || fail "Debian packages missing: ${need[*]}. Install them as root: sudo tools/system_packages.sh"
command -v apt-get >/dev/null || fail "Debian packages missing: ${need[*]}, and there is no apt-get to install them"
log=/tmp/netmoments-apt.log
echo "installing Debian packages: ${need[*]} (log: $log)"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >"$log" 2>&1; then
  tail -20 "$log" >&2
  fail "apt-get could not install ${need[*]} (log: $log)"
fi
mapfile -t still < <(missing)
[ ${#still[@]} -eq 0 ] || fail "still missing after apt-get install: ${still[*]} (log: $log)"
echo "Debian packages installed: ${need[*]}"
