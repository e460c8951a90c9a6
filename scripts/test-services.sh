# Sourced by `make test` and .ci/run: starts the real services the
# integration tests use, and exports where they are.
#   PostgreSQL (Debian's package)  -> FERRY_TEST_POSTGRES_URL
#   Versity S3 Gateway (go install) -> FERRY_TEST_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY
# Each is started only if it is not running already. Nothing here fails the
# run: a test that needs a missing service says so loudly (and fails when
# FERRY_TEST_REQUIRE_ALL=1, as in CI).

# Sourced from the repository root (make and .ci/run run there).
_ferry_root="$(pwd)"

if [ "$(id -u)" = 0 ] && [ -f "$_ferry_root/scripts/postgres-test.sh" ]; then
  if _pg_env="$(bash "$_ferry_root/scripts/postgres-test.sh" 2>/tmp/ferry-postgres-test.log)"; then
    eval "$_pg_env"
  else
    echo "test-services: PostgreSQL did not start (see /tmp/ferry-postgres-test.log)" >&2
  fi
fi

_gw="$(go env GOPATH)/bin/versitygw"
if [ -z "${FERRY_TEST_S3_ENDPOINT:-}" ] && [ -x "$_gw" ]; then
  export FERRY_TEST_S3_ACCESS_KEY=ferrytest FERRY_TEST_S3_SECRET_KEY=ferrytestsecret
  export FERRY_TEST_S3_ENDPOINT=127.0.0.1:7070
  if ! (exec 3<>/dev/tcp/127.0.0.1/7070) 2>/dev/null; then
    _s3dir="$(mktemp -d /tmp/ferry-s3.XXXXXX)"
    nohup "$_gw" --access "$FERRY_TEST_S3_ACCESS_KEY" --secret "$FERRY_TEST_S3_SECRET_KEY" \
      --port 127.0.0.1:7070 posix "$_s3dir" >/tmp/ferry-versitygw.log 2>&1 &
    for _i in $(seq 1 50); do
      (exec 3<>/dev/tcp/127.0.0.1/7070) 2>/dev/null && break
      sleep 0.2
    done
  fi
fi
# libvirtd and virtlogd (Debian's libvirt-daemon-system; no systemd here):
# started once for the whole run, so that no package's tests start and stop
# them under another package's tests running at the same time.
if [ "$(id -u)" = 0 ] && command -v libvirtd >/dev/null 2>&1; then
  # A socket file alone proves nothing: a daemon that died leaves it
  # behind, and QEMU domains then fail with "Connection refused".
  if ! pgrep -x virtlogd >/dev/null && command -v virtlogd >/dev/null 2>&1; then
    rm -f /run/libvirt/virtlogd-sock /run/libvirt/virtlogd-admin-sock
    virtlogd -d || echo "test-services: virtlogd did not start" >&2
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    rm -f /run/libvirt/libvirt-sock /run/libvirt/libvirt-sock-ro /run/libvirt/libvirt-admin-sock
    libvirtd -d || echo "test-services: libvirtd did not start" >&2
    for _i in $(seq 1 75); do
      [ -S /run/libvirt/libvirt-sock ] && break
      sleep 0.2
    done
  fi
  pgrep -x virtlogd >/dev/null || echo "test-services: virtlogd is not running: libvirt tests will fail" >&2
fi
if [ "${CI:-}" = true ]; then
  export FERRY_TEST_REQUIRE_ALL=1
fi
unset _ferry_root _pg_env _gw _s3dir _i
