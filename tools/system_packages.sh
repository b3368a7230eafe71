#!/usr/bin/env bash
# Debian packages the book build and its browser test need: Chromium + ChromeDriver, MathJax (local copy), and
# Fashion-MNIST. Installed only when missing; without root the test that needs them is skipped with a message.
set -uo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
[ -f /usr/share/javascript/mathjax/MathJax.js ] || need+=(libjs-mathjax)
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need+=(dataset-fashion-mnist)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then echo "system packages missing (${need[*]}); run as root to install them" >&2; exit 0; fi
echo "installing ${need[*]}"
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/tmp/netmoments-apt.log 2>&1 \
  || { echo "apt-get failed; see /tmp/netmoments-apt.log" >&2; tail -5 /tmp/netmoments-apt.log >&2; }
exit 0
