//! PostgreSQL `numeric` in its binary wire format, to and from decimal text.
//!
//! The wire format: `ndigits`, `weight`, `sign`, `dscale` (all 16 bit), then `ndigits`
//! base-10000 digits; the first digit is worth `10000^weight`.

use bytes::{BufMut, BytesMut};

use super::ValueError;

const POSITIVE: u16 = 0x0000;
const NEGATIVE: u16 = 0x4000;
const NAN: u16 = 0xC000;
const POSITIVE_INFINITY: u16 = 0xD000;
const NEGATIVE_INFINITY: u16 = 0xF000;

/// Decodes a binary `numeric` into its text form (`"-12.340"`, `"NaN"`, `"Infinity"`).
pub fn decode(mut raw: &[u8]) -> Result<String, ValueError> {
    let mut next = || -> Result<u16, ValueError> {
        let (head, rest) = raw
            .split_first_chunk::<2>()
            .ok_or(ValueError::Malformed("numeric"))?;
        raw = rest;
        Ok(u16::from_be_bytes(*head))
    };
    let ndigits = next()?;
    let weight = i32::from(next()? as i16);
    let sign = next()?;
    let dscale = usize::from(next()?);
    let digits = (0..ndigits)
        .map(|_| next())
        .collect::<Result<Vec<_>, _>>()?;
    match sign {
        POSITIVE | NEGATIVE => {}
        NAN => return Ok("NaN".to_owned()),
        POSITIVE_INFINITY => return Ok("Infinity".to_owned()),
        NEGATIVE_INFINITY => return Ok("-Infinity".to_owned()),
        _ => return Err(ValueError::Malformed("numeric")),
    }
    let digit_at = |power: i32| -> u16 {
        usize::try_from(weight - power)
            .ok()
            .and_then(|index| digits.get(index).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == NEGATIVE && !digits.iter().all(|&d| d == 0) {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit_at(weight).to_string());
        for power in (0..weight).rev() {
            text.push_str(&format!("{:04}", digit_at(power)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::with_capacity(dscale + 4);
        let mut power = -1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit_at(power)));
            power -= 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

/// Encodes decimal text (`[+-]digits[.digits]`, `NaN`, `[+-]Infinity`) as binary `numeric`.
pub fn encode(text: &str, out: &mut BytesMut) -> Result<(), ValueError> {
    let special = |sign: u16, out: &mut BytesMut| {
        out.put_u16(0);
        out.put_i16(0);
        out.put_u16(sign);
        out.put_u16(0);
    };
    let trimmed = text.trim();
    match trimmed.to_ascii_lowercase().as_str() {
        "nan" => {
            special(NAN, out);
            return Ok(());
        }
        "infinity" | "+infinity" | "inf" | "+inf" => {
            special(POSITIVE_INFINITY, out);
            return Ok(());
        }
        "-infinity" | "-inf" => {
            special(NEGATIVE_INFINITY, out);
            return Ok(());
        }
        _ => {}
    }
    let invalid = || ValueError::InvalidDecimal;
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if integer.is_empty() && fraction.is_empty()
        || !integer
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let dscale = u16::try_from(fraction.len()).map_err(|_| invalid())?;
    let integer = integer.trim_start_matches('0');
    let integer_pad = (4 - integer.len() % 4) % 4;
    let fraction_pad = (4 - fraction.len() % 4) % 4;
    let padded: String = "0".repeat(integer_pad) + integer + fraction + &"0".repeat(fraction_pad);
    let mut digits: Vec<u16> = padded
        .as_bytes()
        .chunks(4)
        .map(|group| {
            group
                .iter()
                .fold(0u16, |acc, &b| acc * 10 + u16::from(b - b'0'))
        })
        .collect();
    let integer_groups = (integer.len() + integer_pad) / 4;
    let mut weight = i32::try_from(integer_groups).map_err(|_| invalid())? - 1;
    let leading = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading);
    weight -= i32::try_from(leading).map_err(|_| invalid())?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let ndigits = u16::try_from(digits.len()).map_err(|_| invalid())?;
    let weight = i16::try_from(weight).map_err(|_| invalid())?;
    out.put_u16(ndigits);
    out.put_i16(weight);
    out.put_u16(if negative && !digits.is_empty() {
        NEGATIVE
    } else {
        POSITIVE
    });
    out.put_u16(dscale);
    for digit in digits {
        out.put_u16(digit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let mut buf = BytesMut::new();
        encode(text, &mut buf).expect("encodes");
        decode(&buf).expect("decodes")
    }

    #[test]
    fn decimal_text_round_trips() {
        for text in [
            "0",
            "1",
            "-1",
            "10000",
            "12345678.9",
            "-0.0001",
            "0.00000001",
            "123.4500",
            "99999999999999999999999999.123456789012345678",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.000",
        ] {
            assert_eq!(round_trip(text), text);
        }
    }

    #[test]
    fn normalizes_signs_and_leading_zeros() {
        assert_eq!(round_trip("+007.50"), "7.50");
        assert_eq!(round_trip("-0.00"), "0.00");
        assert_eq!(round_trip(".5"), "0.5");
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "-", "1e5", "1.2.3", "abc", "1,5"] {
            assert!(encode(text, &mut BytesMut::new()).is_err(), "{text}");
        }
    }
}
