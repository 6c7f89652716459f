"""A byte-level tokenizer with two special tokens, built in-process for tests."""

import numpy as np

SPECIALS = {"<|im_start|>": 1, "<|im_end|>": 2}
OFFSET = 3  # ids 0..2: pad, <|im_start|>, <|im_end|>


class ByteTokenizer:
    """encode/decode over UTF-8 bytes; `<|im_start|>` and `<|im_end|>` are single tokens."""

    pad_token_id = 0
    eos_token_id = 2
    vocab_size = 256 + OFFSET

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for name, tid in SPECIALS.items():
                if text.startswith(name, i):
                    ids.append(tid)
                    i += len(name)
                    break
            else:
                ids.extend(b + OFFSET for b in text[i].encode("utf-8"))
                i += 1
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out, buf = [], bytearray()
        inverse = {v: k for k, v in SPECIALS.items()}
        for t in np.asarray(ids).tolist():
            if t >= OFFSET:
                buf.append(t - OFFSET)
                continue
            out.append(buf.decode("utf-8", "replace"))
            buf = bytearray()
            if t in inverse and not skip_special_tokens:
                out.append(inverse[t])
        out.append(buf.decode("utf-8", "replace"))
        return "".join(out)

    def chat_prompt_text(self, messages, add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
