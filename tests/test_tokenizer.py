from transformers import CLIPTokenizer

from repro.models.tokenizer import apply_bpe, build_bpe, bytes_to_unicode, write_clip_tokenizer

WORDS = "a large red striped triangle pointing left on the right small blue circle at top striper stripe".split()


def test_every_word_is_one_token(tmp_path):
    write_clip_tokenizer(tmp_path, WORDS)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for word in WORDS:
        pieces = tok.tokenize(word)
        assert pieces == [word + "</w>"], (word, pieces)


def test_unknown_words_fall_apart_but_never_fail(tmp_path):
    write_clip_tokenizer(tmp_path, WORDS)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    ids = tok("a zorblax wibbling, über-red!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]  # every byte has a symbol


def test_reference_bpe_agrees_with_transformers(tmp_path):
    vocab, merges = build_bpe(WORDS)
    ranks = {pair: i for i, pair in enumerate(merges)}
    write_clip_tokenizer(tmp_path, WORDS)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    enc = bytes_to_unicode()
    for word in WORDS + ["stripes", "lefty", "triangles"]:
        symbols = [enc[b] for b in word.encode()]
        symbols[-1] += "</w>"
        assert apply_bpe(symbols, ranks) == tok.tokenize(word)
    assert vocab[tok.eos_token] == tok.eos_token_id != 2
