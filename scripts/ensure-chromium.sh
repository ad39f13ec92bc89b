#!/usr/bin/env bash
# The browser test drives Debian's chromium through Playwright (no browser download).
# Install it when missing and we are allowed to (root with apt-get); otherwise the browser test
# reports clearly that chromium is absent.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "installing chromium for the browser test (apt-get)..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will fail" >&2
else
  echo "warning: /usr/bin/chromium missing and apt-get unavailable; the browser test will fail" >&2
fi
exit 0
