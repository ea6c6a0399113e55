#!/usr/bin/env bash
# Packaging checks: the systemd unit verifies, and the .deb builds and holds the expected files.
# Run by tests/run_all.sh when CI=true or SWITCHYARD_PACKAGING=1 (it needs a release build).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null; then
  cargo install cargo-deb --locked
fi
if [ "${CI:-}" = "true" ]; then
  # The package is stripped: debug info would only take the CI machine's disk and time.
  export CARGO_PROFILE_RELEASE_DEBUG=false
fi
cargo deb --strip

if command -v systemd-analyze >/dev/null; then
  unit=$(mktemp -d)/switchyard.service
  sed "s#/usr/bin/switchyard#$PWD/target/release/switchyard#g" packaging/systemd/switchyard.service > "$unit"
  systemd-analyze verify "$unit"
  echo "packaging: systemd-analyze verify: ok"
else
  echo "packaging: systemd-analyze not found; skipping the unit check"
fi

deb=$(ls -t target/debian/switchyard_*.deb | head -n 1)
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/switchyard ./etc/switchyard/switchyard.yaml ./usr/lib/systemd/system/switchyard.service \
         ./usr/share/doc/switchyard/README.md; do
  grep -q " $f\$" <<<"$contents" || { echo "packaging: $f missing from $deb"; exit 1; }
done
# Read whole before matching: `grep -q` exits at its first match, and under pipefail the
# writer's SIGPIPE would then fail the check.
grep -q "Depends:.*adduser" <<<"$(dpkg-deb --info "$deb")" \
  || { echo "packaging: adduser dependency missing"; exit 1; }
control=$(mktemp -d)
dpkg-deb --control "$deb" "$control"
[[ -f $control/conffiles ]] || { echo "packaging: no conffiles"; exit 1; }
grep -qx "/etc/switchyard/switchyard.yaml" "$control/conffiles" \
  || { echo "packaging: the config is not a conffile"; exit 1; }
grep -q "adduser --system" "$control/postinst" \
  || { echo "packaging: postinst does not create the user"; exit 1; }
echo "packaging: $deb: ok"
if [ "${CI:-}" = "true" ]; then
  # CI's disk may not hold the release tree and the debug tree the tests build next.
  rm -rf target/release target/debian
fi
