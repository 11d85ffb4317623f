//! What upstreams that fold Unicode to ASCII read: the readings that
//! routing and request-dependent prices are checked against.
//!
//! Upstreams fold in several ways: compatibility normalization (NFKC or
//! NFKD: `ｐ` is `p`, `．` is `.`, `ŉ` is `ʼn`), Windows' best-fit code
//! pages (`ı` is `i`, `∕` is `/`), and "slugify"-style dropping of what is
//! not ASCII, after decomposing or not (`é` is `e`, or nothing; a soft
//! hyphen or a zero-width space vanishes). These disagree with each other
//! (`ʼ` is `'` to best-fit and nothing to a slugifier), so there is no one
//! reading: [`ascii_readings`] gives each combination, always in the same
//! order, and a path or a priced value is ambiguous when any reading of it
//! means something else than it does. Every reading is all ASCII.

use unicode_normalization::UnicodeNormalization;

/// How many readings [`ascii_readings`] gives.
pub const READINGS: usize = 6;

/// `text` as each kind of folding upstream reads it, in a fixed order
/// (compare a request's reading with a route's or a rule's of the same
/// index): NFKD, NFKC or nothing first, then with best-fit's mappings or
/// without, then every other non-ASCII character dropped. `ｐｒｅｍｉｕｍ`,
/// `prēmıum`, `pre\u{AD}mium`, `admi\u{149}` (`ŉ`) read `premium` or
/// `admin` in at least one.
pub fn ascii_readings(text: &str) -> [String; READINGS] {
    // ASCII reads as itself every way (NFKC and NFKD leave it alone).
    if text.is_ascii() {
        return std::array::from_fn(|_| text.to_owned());
    }
    let decomposed: Vec<char> = text.nfkd().collect();
    let composed: Vec<char> = text.nfkc().collect();
    let raw: Vec<char> = text.chars().collect();
    let fitted = |chars: &[char]| chars.iter().copied().filter_map(ascii_char).collect();
    let dropped = |chars: &[char]| chars.iter().copied().filter(char::is_ascii).collect();
    [
        fitted(&decomposed),
        dropped(&decomposed),
        fitted(&composed),
        dropped(&composed),
        fitted(&raw),
        dropped(&raw),
    ]
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
        '\u{223C}' | '\u{2248}' => '~',
        // Greek and Cyrillic letters best-fit reads as Latin ones.
        '\u{0391}' | '\u{03B1}' => 'a',
        '\u{0392}' | '\u{03B2}' => 'b',
        '\u{0393}' => 'G',
        '\u{0394}' | '\u{03B4}' => 'd',
        '\u{0395}' | '\u{03B5}' => 'e',
        '\u{0398}' | '\u{03B8}' => 'T',
        '\u{0399}' | '\u{03B9}' => 'i',
        '\u{039A}' | '\u{03BA}' => 'k',
        '\u{039C}' | '\u{03BC}' => 'm',
        '\u{039D}' | '\u{03BD}' => 'n',
        '\u{039F}' | '\u{03BF}' => 'o',
        '\u{03A0}' | '\u{03C0}' => 'p',
        '\u{03A1}' | '\u{03C1}' => 'r',
        '\u{03A3}' | '\u{03C3}' | '\u{03C2}' => 's',
        '\u{03A4}' | '\u{03C4}' => 't',
        '\u{03A5}' | '\u{03C5}' => 'u',
        '\u{03A6}' | '\u{03C6}' => 'f',
        '\u{03A7}' | '\u{03C7}' => 'x',
        '\u{03A9}' | '\u{03C9}' => 'O',
        '\u{0430}' => 'a',
        '\u{0435}' => 'e',
        '\u{043E}' => 'o',
        '\u{0440}' => 'p',
        '\u{0441}' => 'c',
        '\u{0443}' => 'y',
        '\u{0445}' => 'x',
        '\u{0455}' => 's',
        '\u{0456}' => 'i',
        '\u{0458}' => 'j',
        '\u{04BB}' => 'h',
        // Signs: set and logic, currency, box drawing, percent.
        '\u{2229}' => 'n',
        '\u{212E}' => 'e',
        '\u{2118}' | '\u{20A7}' => 'P',
        '\u{221E}' => '8',
        '\u{2261}' | '\u{2264}' | '\u{2265}' => '=',
        '\u{221A}' => 'v',
        '\u{066A}' => '%',
        '\u{2500}' => '-',
        '\u{2502}' => '|',
        '\u{250C}' | '\u{2510}' | '\u{2514}' | '\u{2518}' | '\u{253C}' => '+',
        // Japanese and Korean code pages put `¥` and `₩` where `\` is.
        '\u{00A5}' | '\u{20A9}' => '\\',
        _ => return None,
    })
}

/// Whether some lenient upstream reads `text` as `wanted`: under one of
/// the ASCII readings ([`ascii_readings`]: `ｈd`,
/// `h\u{AD}d`, `ḣd`, `hʼd`), cut at NUL (C strings), without control
/// characters, trimmed, case ignored; each reading of `text` against the
/// same reading of `wanted`.
pub fn reads_as(text: &str, wanted: &str) -> bool {
    let loose = |text: &str| {
        let cut = text.split('\0').next().unwrap_or("");
        ascii_readings(cut).map(|read| {
            let kept: String = read.chars().filter(|c| !c.is_ascii_control()).collect();
            kept.trim().to_ascii_lowercase()
        })
    };
    loose(text)
        .iter()
        .zip(loose(wanted).iter())
        // A reading may hold an escape that decodes to the value (`٪75`
        // is `%75` to best-fit, then `u`).
        .any(|(a, b)| a == b || decode_again(a).is_some_and(|a| a.to_ascii_lowercase() == *b))
}

/// Whether some lenient upstream reads the parameter or key `name` as
/// `wanted` (not spelled so): as [`reads_as`], or once PHP has mangled
/// it (`.`, space and `[` become `_`) or read it as an array
/// (`quality[]`, `quality[0]`).
pub fn name_reads_as(name: &str, wanted: &str) -> bool {
    if name == wanted {
        return false;
    }
    // PHP, Rails and qs read `a[0][b]`, `a[b]` and `a[]` as (in) `a`.
    let array = name
        .strip_suffix(']')
        .and_then(|n| n.split_once('['))
        .map(|(base, _)| base);
    // PHP drops leading spaces before it mangles (` hd.mode` is `hd_mode`).
    let mangled: String = name
        .trim_start_matches(' ')
        .chars()
        .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
        .collect();
    let variants = [Some(name), array, Some(mangled.as_str())];
    for variant in variants.into_iter().flatten() {
        if variant == wanted || reads_as(variant, wanted) {
            return true;
        }
    }
    false
}

/// `value` percent-decoded once more (`%XX`, and IIS's `%uXXXX`), when
/// that changes it.
pub fn decode_again(value: &str) -> Option<String> {
    if !value.contains('%') {
        return None;
    }
    let bytes = value.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |from: usize, n: usize| {
        let digits = value.get(from..from + n)?;
        u32::from_str_radix(digits, 16).ok()
    };
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(c) = matches!(bytes.get(i + 1), Some(b'u' | b'U'))
                .then(|| hex(i + 2, 4).and_then(char::from_u32))
                .flatten()
            {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += 6;
                continue;
            }
            if let Some(b) = hex(i + 1, 2) {
                out.push(b as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    let again = String::from_utf8_lossy(&out).into_owned();
    (again != value).then_some(again)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first reading: decomposed, best-fit, the rest dropped.
    fn ascii_reading(text: &str) -> String {
        let [first, ..] = ascii_readings(text);
        first
    }

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
        for (text, read) in [
            ("\u{3C0}remium", "premium"),
            ("pr\u{3B5}mium", "premium"),
            ("\u{3B1}dmin", "admin"),
            ("admi\u{2229}", "admin"),
            ("\u{4BB}d", "hd"),
            ("\u{66A}70remium", "%70remium"),
            ("..\u{A5}premium", "..\\premium"),
            ("..\u{20A9}premium", "..\\premium"),
            ("gpt\u{2500}4", "gpt-4"),
        ] {
            assert_eq!(ascii_reading(text), read, "{text:?}");
        }
        assert_eq!(ascii_reading("日本"), "");
    }

    #[test]
    fn the_folds_that_disagree_each_have_a_reading() {
        let reads = |text: &str, wanted: &str| ascii_readings(text).iter().any(|r| r == wanted);
        // `ŉ` is `ʼn`: best-fit reads `'n`, a slugifier `n`.
        assert!(reads("admi\u{149}", "admin"));
        assert!(reads("admi\u{149}", "admi'n"));
        // `Ǆ` is `DŽ` composed, `DZ` + caron decomposed.
        assert!(reads("a\u{1C4}min", "aDmin"));
        // `é` is `e` decomposed, nothing to a plain slugifier.
        assert!(reads("a\u{E9}dmin", "admin"));
        assert!(reads("premium\u{2BC}", "premium"));
        assert!(ascii_readings("日本").iter().all(String::is_empty));
        assert!(ascii_readings("plain").iter().all(|r| r == "plain"));
    }
}
