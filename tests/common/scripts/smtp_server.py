#!/usr/bin/env python3
"""A real SMTP server for caretaker's email tests (aiosmtpd).

Listens on 127.0.0.1 on an ephemeral port and writes that port to --port-file once it
accepts connections (atomically, so a reader never sees a partial number). Every message
it accepts is saved to --maildir as NNNNNN.eml (the raw message as received) with its
SMTP envelope in NNNNNN.json, both written atomically; the .eml is renamed into place
last, so a test that sees it can read both.

  smtp_server.py --port-file F --maildir D [--port N] [--starttls CERT KEY | --tls CERT KEY]
                 [--auth USER:PASS] [--echo-auth PLAIN|LOGIN]
                 [--reject-rcpt ADDR]... [--defer-rcpt ADDR]...

--echo-auth MECH offers only that AUTH mechanism and refuses every login with a 535 reply that
quotes back the base64 the client sent, as some servers do: the password in the clear for
anyone who keeps the reply.
--port N listens on a fixed port, so a test can stop the server and start it again where
the daemon under test expects it. Message numbers continue after those already in --maildir.
  smtp_server.py --make-certs DIR   writes ca.pem, server.pem, server.key for 127.0.0.1
                                    and localhost (with trustme), then exits

Needs: pip install aiosmtpd trustme
"""

import argparse
import asyncio
import base64
import itertools
import json
import os
import signal
import ssl
import sys


def write_atomically(path, data):
    """Temp file in the same directory, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_certs(directory):
    import trustme

    os.makedirs(directory, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
    cert.private_key_pem.write_to_path(os.path.join(directory, "server.key"))
    cert.cert_chain_pems[0].write_to_path(os.path.join(directory, "server.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(os.path.join(directory, "server.pem"), append=True)


def login_of(session):
    data = session.auth_data if session.authenticated else None
    login = getattr(data, "login", None)
    return login.decode() if isinstance(login, bytes) else login


class Handler:
    def __init__(self, maildir, reject, defer):
        self.maildir = maildir
        self.reject = {address.lower() for address in reject}
        self.defer = {address.lower() for address in defer}
        # A restarted server must not overwrite what an earlier run received.
        taken = [int(name[:-4]) for name in os.listdir(maildir)
                 if name.endswith(".eml") and not name.startswith(".")]
        self.counter = itertools.count(max(taken, default=0) + 1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if address.lower() in self.defer:
            return "451 4.3.0 <%s>: Temporary lookup failure, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        stem = os.path.join(self.maildir, "%06d" % next(self.counter))
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None,
            "auth_login": login_of(session),
        }
        write_atomically(stem + ".json", json.dumps(meta).encode())
        write_atomically(stem + ".eml", envelope.original_content)
        return "250 Message accepted for delivery"


class EchoingHandler(Handler):
    """Refuses every AUTH, quoting the client's base64 answers in the 535 reply.

    aiosmtpd hands over what it decoded; base64 is canonical, so encoding it again gives back
    exactly the text the client sent.
    """

    @staticmethod
    def refusal(*answers):
        from aiosmtpd.smtp import AuthResult

        quoted = " ".join(base64.b64encode(a).decode() for a in answers)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Authentication credentials invalid: %s" % quoted)

    async def auth_PLAIN(self, server, args):
        if len(args) > 1:
            answer = base64.b64decode(args[1])
        else:
            answer = await server.challenge_auth("")
        return self.refusal(answer)

    async def auth_LOGIN(self, server, args):
        if len(args) > 1:
            user = base64.b64decode(args[1])
        else:
            user = await server.challenge_auth("Username:")
        password = await server.challenge_auth("Password:")
        return self.refusal(user, password)


def authenticator_for(user, password):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        # auth_data is what aiosmtpd keeps as session.auth_data, so the envelope can name the login.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticate


def server_context(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(args):
    from aiosmtpd.smtp import SMTP

    os.makedirs(args.maildir, exist_ok=True)
    handler = (EchoingHandler if args.echo_auth else Handler)(
        args.maildir, args.reject_rcpt, args.defer_rcpt)
    starttls = server_context(*args.starttls) if args.starttls else None
    implicit = server_context(*args.tls) if args.tls else None
    auth = {}
    if args.auth or args.echo_auth:
        user, _, password = (args.auth or ":").partition(":")
        auth = dict(
            authenticator=authenticator_for(user, password),
            auth_required=True,
            # With implicit TLS the whole connection is encrypted; aiosmtpd only knows about
            # STARTTLS, so it would otherwise never offer AUTH there.
            auth_require_tls=implicit is None,
        )
    if args.echo_auth:
        auth["auth_exclude_mechanism"] = [m for m in ("PLAIN", "LOGIN") if m != args.echo_auth]

    loop = asyncio.get_running_loop()

    def factory():
        return SMTP(
            handler,
            hostname="caretaker-test-smtp",
            tls_context=starttls,
            require_starttls=starttls is not None,
            loop=loop,
            **auth,
        )

    server = await loop.create_server(factory, host="127.0.0.1", port=args.port, ssl=implicit)
    port = server.sockets[0].getsockname()[1]
    write_atomically(args.port_file, ("%d\n" % port).encode())
    print("smtp_server: listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)

    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()
    await server.wait_closed()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-certs", metavar="DIR")
    parser.add_argument("--port-file")
    parser.add_argument("--maildir")
    parser.add_argument("--port", type=int, default=0, help="fixed port (default: an ephemeral one)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    tls.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--auth", metavar="USER:PASS")
    parser.add_argument("--echo-auth", choices=("PLAIN", "LOGIN"),
                        help="offer only this AUTH mechanism and refuse every login, quoting "
                             "the client's base64 in the reply")
    parser.add_argument("--reject-rcpt", metavar="ADDR", action="append", default=[],
                        help="answer RCPT TO for ADDR with 550 (permanent)")
    parser.add_argument("--defer-rcpt", metavar="ADDR", action="append", default=[],
                        help="answer RCPT TO for ADDR with 451 (temporary)")
    args = parser.parse_args()

    if args.make_certs:
        make_certs(args.make_certs)
        return
    if not args.port_file or not args.maildir:
        parser.error("--port-file and --maildir are required")
    if args.auth and ":" not in args.auth:
        parser.error("--auth takes USER:PASS")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
