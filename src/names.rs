//! Kubernetes' name rules, as the API server applies them (apimachinery's IsDNS1123Label and
//! IsDNS1123Subdomain), written once for every room that checks a name before sending it, and
//! how a long name is made to fit a limit.

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or
/// digit, at most 63 characters (what a Namespace's name must be).
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shaped(s)
}

/// A DNS-1123 subdomain: dot-separated parts shaped like labels, at most 253 characters in all
/// (what most object names must be; the parts themselves are not limited to 63).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_shaped)
}

fn is_label_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
}

/// `s` if it fits in `max` bytes; else a prefix of it and a hash of all of it, so two long
/// names that share a prefix stay apart. Stable across runs and versions (FNV-1a).
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut end = max - 17;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash:016x}", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains_as_the_api_server_takes_them() {
        for ok in ["a", "node-1", "0a", &"x".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"x".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        let long_part = format!("{}.example", "x".repeat(64));
        for ok in [
            "a",
            "disk-a.v2",
            "a.b.c",
            long_part.as_str(),
            &"x".repeat(253),
        ] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a.-b",
            "A.b",
            "a/b",
            &"x".repeat(254),
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }
}
