//! What an upstream that folds Unicode to ASCII reads: the one reading
//! that routing and request-dependent prices are checked against.
//!
//! Upstreams fold in several ways: compatibility normalization (NFKC:
//! `ｐ` is `p`, `．` is `.`), Windows' best-fit code pages (`ı` is `i`,
//! `∕` is `/`), "slugify"-style decomposing and dropping what is not ASCII
//! (`é` is `e`, a soft hyphen or a zero-width space vanishes). A path or a
//! priced value that reads as another one under any of them is ambiguous.
//! The reading here is the union: decompose (NFKD), map what best-fit maps,
//! drop everything else that is not ASCII.

use unicode_normalization::UnicodeNormalization;

/// `text` as a folding upstream reads it, all ASCII: `ｐｒｅｍｉｕｍ`,
/// `prēmıum`, `pre\u{AD}mium` and `pre\u{200B}mium` all read `premium`;
/// `∕` reads `/`, `∖` reads `\\`.
pub fn ascii_reading(text: &str) -> String {
    text.nfkd().filter_map(ascii_char).collect()
}

/// One character of an NFKD-decomposed text as ASCII, if it has a
/// reading: itself when ASCII, else the letter or sign Windows' best-fit
/// tables (`bestfit1252.txt`) map it to without a compatibility
/// decomposition (`ı` to `i`, `∕` to `/`, `∖` to `\\`); combining marks,
/// invisible formatting characters and everything else have none.
fn ascii_char(c: char) -> Option<char> {
    if c.is_ascii() {
        return Some(c);
    }
    Some(match c {
        '\u{0110}' | '\u{0189}' => 'D',
        '\u{0111}' => 'd',
        '\u{0126}' => 'H',
        '\u{0127}' => 'h',
        '\u{0131}' => 'i',
        '\u{0197}' => 'I',
        '\u{0237}' => 'j',
        '\u{0141}' => 'L',
        '\u{0142}' | '\u{019A}' => 'l',
        '\u{00D8}' | '\u{019F}' => 'O',
        '\u{00F8}' => 'o',
        '\u{0166}' | '\u{01AE}' => 'T',
        '\u{0167}' | '\u{01AB}' => 't',
        '\u{0180}' => 'b',
        '\u{0191}' => 'F',
        '\u{01B5}' => 'Z',
        '\u{01B6}' => 'z',
        '\u{01E4}' => 'G',
        '\u{01E5}' | '\u{0261}' => 'g',
        '\u{2044}' | '\u{2215}' | '\u{29F8}' => '/',
        '\u{2216}' | '\u{29F5}' | '\u{29F9}' => '\\',
        '\u{2024}' => '.',
        '\u{2236}' => ':',
        '\u{01C0}' | '\u{2223}' => '|',
        '\u{02B9}' | '\u{02BC}' | '\u{02C8}' | '\u{2032}' => '\'',
        '\u{02CB}' | '\u{2035}' => '`',
        '\u{02CD}' => '_',
        '\u{2010}' | '\u{2011}' | '\u{2212}' => '-',
        '\u{2217}' => '*',
        '\u{223C}' => '~',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fold_reads_the_same() {
        for text in [
            "premium",
            "ｐｒｅｍｉｕｍ",
            "prēmium",
            "premıum",
            "pre\u{AD}mium",
            "pre\u{200B}mium",
            "\u{FEFF}premium",
            "pre\u{2060}mium",
            "pre\u{301}mium",
            "pre€mium",
            "pre\u{E0021}mium",
        ] {
            assert_eq!(ascii_reading(text), "premium", "{text:?}");
        }
        assert_eq!(ascii_reading("PREMİUM"), "PREMIUM");
        assert_eq!(ascii_reading("a\u{2215}b\u{2216}c"), "a/b\\c");
        assert_eq!(ascii_reading("max_token\u{17F}"), "max_tokens");
        assert_eq!(ascii_reading("日本"), "");
    }
}
