def test_set_get(raw):
    assert raw.ask(b"set a 0 0 5\r\nhello\r\n") == b"STORED\r\n"
    assert raw.ask(b"get a\r\n") == b"VALUE a 0 5\r\nhello\r\nEND\r\n"


def test_subprocess(spawn):
    from tests.conftest import Raw

    p = spawn()
    r = Raw(p.port)
    assert r.ask(b"set a 0 0 1\r\nx\r\n") == b"STORED\r\n"
    r.close()
    assert p.terminate() == 0
    assert b"set a 0 0 1" in p.data_file.read_bytes()
