"""An HTTPS proxy in front of the GCS emulator, with faults on demand (tests only).

    python tests/gcs_proxy.py --upstream 127.0.0.1:PORT --cert C --key K --ca CA \
        --faults FAULTS.json --log REQUESTS.jsonl

prints the port it listens on (loopback) and serves until killed. Every GCS client of a run
reaches it through `https_proxy`: TensorFlow's and tensorstore's libcurl, and requests (under
google-cloud-storage). A client asks `CONNECT storage.googleapis.com:443`; the proxy answers with
a certificate of the test CA for that name, reads the HTTP requests inside, and forwards each to
the emulator. Why not a plain tunnel: TensorFlow has no endpoint override (it names Google's hosts
itself), it sends `Transfer-Encoding: identity` on empty uploads, which the emulator's HTTP server
rejects with 501, and the faults need to see each request.

Faults: FAULTS.json holds a list of rules, read again whenever the file changes (which also resets
the rules' counters). A rule
    {"method": "PUT|POST", "path": "regex", "action": "503", "skip": 0, "times": 3}
(its path matched URL-decoded) lets the first `skip` matching requests through, then applies
`action` to the next `times` ones (-1: to all of them). Actions: an HTTP status ("429", "503",
"401", …, answered with GCS's JSON error body) or "reset" (the connection is closed with a TCP
reset, nothing answered).
Each request is logged to REQUESTS.jsonl: method, host, path (decoded), status, fault.
"""
import argparse
import http.client
import http.server
import json
import os
import re
import socket
import socketserver
import ssl
import struct
import sys
import threading
import urllib.parse

# Not forwarded: hop-by-hop headers, and those the proxy sets itself.
_HOP_BY_HOP = {'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te',
               'trailer', 'transfer-encoding', 'upgrade', 'content-length', 'date', 'server'}


class Faults:
  """The rules of the fault file, reloaded when it changes; counters per rule."""

  def __init__(self, path):
    self.path, self.mtime, self.rules, self.lock = path, None, [], threading.Lock()

  def _reload(self):
    try:
      mtime = os.stat(self.path).st_mtime_ns
    except FileNotFoundError:
      mtime = None
    if mtime != self.mtime:
      self.mtime = mtime
      self.rules = []
      if mtime is not None:
        with open(self.path) as f:
          self.rules = [dict(rule, seen=0) for rule in json.load(f)]

  def match(self, method, path):
    """The rule whose fault applies to this request, or None. Paths are matched decoded
    (object names travel as `name=runs%2Fx%2F…`)."""
    path = urllib.parse.unquote(path)
    with self.lock:
      self._reload()
      for rule in self.rules:
        if not (re.fullmatch(rule.get('method', '.*'), method) and
                re.search(rule.get('path', ''), path)):
          continue
        rule['seen'] += 1
        skip, times = rule.get('skip', 0), rule.get('times', -1)
        if rule['seen'] > skip and (times < 0 or rule['seen'] <= skip + times):
          return rule
    return None


class Log:
  def __init__(self, path):
    self.path, self.lock = path, threading.Lock()

  def write(self, **record):
    with self.lock, open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


def _reset(sock):
  """Closes `sock` with a TCP reset (SO_LINGER 0): the client sees 'connection reset'."""
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
  except OSError:
    pass
  sock.close()


class Forwarder(http.server.BaseHTTPRequestHandler):
  """The HTTP requests inside one TLS tunnel, forwarded to the emulator over one connection."""
  protocol_version = 'HTTP/1.1'

  def __init__(self, request, client_address, server, host):
    self.host, self.upstream = host, None
    super().__init__(request, client_address, server)

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args

  def _body(self):
    """The request's body, chunked (TensorFlow's uploads, whatever Content-Length they also
    name) or not."""
    if 'chunked' not in self.headers.get('Transfer-Encoding', '').lower():
      return self.rfile.read(int(self.headers.get('Content-Length') or 0))
    parts = []
    while size := int(self.rfile.readline().split(b';')[0], 16):
      parts.append(self.rfile.read(size))
      self.rfile.readline()
    while self.rfile.readline().strip():  # trailers, up to the empty line
      pass
    return b''.join(parts)

  def _reply(self, status, headers, body, length=None):
    self.send_response(status)
    for key, value in headers:
      self.send_header(key, value)
    self.send_header('Content-Length', str(len(body) if length is None else length))
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(body)

  def _fault(self, rule):
    action = str(rule['action'])
    if action == 'reset':
      self.close_connection = True
      self.wfile.flush()
      _reset(self.connection)
      return 'reset'
    status = int(action)
    body = json.dumps({'error': {'code': status, 'message': f'injected fault {status}'}}).encode()
    self._reply(status, [('Content-Type', 'application/json')], body)
    return status

  def _forward(self, body):
    if self.upstream is None:
      self.upstream = http.client.HTTPSConnection(*self.server.upstream,
                                                  context=self.server.client_context, timeout=60)
    self.upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
    for key, value in self.headers.items():
      if key.lower() not in _HOP_BY_HOP:
        self.upstream.putheader(key, value)
    if body or self.command in ('POST', 'PUT', 'PATCH'):
      self.upstream.putheader('Content-Length', str(len(body)))
    self.upstream.endheaders(body or None)
    response = self.upstream.getresponse()
    data = response.read()
    headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
    length = response.getheader('Content-Length', '0') if self.command == 'HEAD' else None
    self._reply(response.status, headers, data, length)
    return response.status

  def _handle(self):
    body = self._body()
    rule = self.server.faults.match(self.command, self.path)
    if rule is not None:
      status = self._fault(rule)
    else:
      status = self._forward(body)
    self.server.log.write(method=self.command, host=self.host,
                          path=urllib.parse.unquote(self.path), status=status,
                          fault=rule is not None)

  do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _handle

  def finish(self):
    try:
      super().finish()
    except OSError:
      pass
    if self.upstream is not None:
      self.upstream.close()


class Connect(http.server.BaseHTTPRequestHandler):
  """Answers CONNECT, then serves the tunnel's requests with a certificate for its host."""
  protocol_version = 'HTTP/1.1'

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args

  def do_CONNECT(self):
    host = self.path.split(':')[0]
    self.send_response(200, 'Connection established')
    self.end_headers()
    self.wfile.flush()
    try:
      tls = self.server.server_context.wrap_socket(self.connection, server_side=True)
      Forwarder(tls, self.client_address, self.server, host)
    except (OSError, ssl.SSLError):
      pass
    self.close_connection = True


class Proxy(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 64

  def __init__(self, args):
    super().__init__(('127.0.0.1', 0), Connect)
    host, port = args.upstream.rsplit(':', 1)
    self.upstream = (host, int(port))
    self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.server_context.load_cert_chain(args.cert, args.key)
    self.client_context = ssl.create_default_context(cafile=args.ca)
    self.faults, self.log = Faults(args.faults), Log(args.log)


def main():
  parser = argparse.ArgumentParser()
  for name in ('--upstream', '--cert', '--key', '--ca', '--faults', '--log'):
    parser.add_argument(name, required=True)
  proxy = Proxy(parser.parse_args())
  print(proxy.server_address[1], flush=True)
  proxy.serve_forever()


if __name__ == '__main__':
  sys.exit(main())
