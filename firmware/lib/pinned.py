# Boot-time only: the TLS context of a board's sessions (lib mqtt_client.py wraps each
# connection to a broker with it). The boards make it once, at boot while the heap is still
# tidy (it is one ~3 KB block on the MicroPython heap), and drop this module afterwards.


def context(ca):
    """A TLS client context that trusts `ca` alone (config.json's broker.ca: the CA
    certificate's DER, base64) and requires the broker to show a certificate it signed
    (CERT_REQUIRED; each connection names the server to check). ValueError if mbedTLS cannot
    parse the certificate; ImportError off MicroPython (no `tls` module)."""
    import tls
    from binascii import a2b_base64

    c = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    c.verify_mode = tls.CERT_REQUIRED
    c.load_verify_locations(a2b_base64(ca))
    return c
