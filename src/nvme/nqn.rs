//! NVMe Qualified Names (NVMe Base Specification 2.0, section 4.5).

/// Longest NQN the specification allows, in bytes (the kernel's `NVMF_NQN_SIZE` is 223 + NUL).
pub const NQN_MAX_LEN: usize = 223;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NqnError {
    /// Longer than 223 bytes.
    #[error("NQN is {len} bytes long; at most 223 are allowed")]
    TooLong { len: usize },
    /// Neither `nqn.yyyy-mm.reverse.domain[:...]` nor `nqn.2014-08.org.nvmexpress:uuid:<uuid>`.
    #[error("expected an NQN like \"nqn.2014-08.org.nvmexpress:uuid:<uuid>\" or \"nqn.yyyy-mm.com.example:name\", found {0:?}")]
    Syntax(String),
    /// A byte that would split or end the fabrics option string.
    #[error("NQN {0:?} contains ',', '=', whitespace or a control character, which the kernel's option parser cannot take")]
    ForbiddenChar(String),
    /// A code point that shows as nothing or reorders text: two NQNs that look alike in logs
    /// and `kubectl` would name different subsystems.
    #[error("NQN {nqn:?} contains the invisible or bidirectional code point U+{code:04X}")]
    Invisible { nqn: String, code: u32 },
}

/// Checks NQN syntax: `nqn.` + `yyyy-mm` + `.` + reverse domain, then optional `:` suffix.
pub fn validate_nqn(s: &str) -> Result<(), NqnError> {
    if s.len() > NQN_MAX_LEN {
        return Err(NqnError::TooLong { len: s.len() });
    }
    if s.chars()
        .any(|c| c == ',' || c == '=' || c.is_whitespace() || c.is_control())
    {
        return Err(NqnError::ForbiddenChar(s.to_string()));
    }
    if let Some(c) = s.chars().find(|c| invisible(*c)) {
        return Err(NqnError::Invisible {
            nqn: s.to_string(),
            code: u32::from(c),
        });
    }
    let syntax = || NqnError::Syntax(s.to_string());
    let rest = s.strip_prefix("nqn.").ok_or_else(syntax)?;
    let b = rest.as_bytes();
    let date_ok = b.len() > 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        )
        && b[7] == b'.';
    if !date_ok {
        return Err(syntax());
    }
    let domain = rest[8..].split(':').next().unwrap_or("");
    let domain_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if !domain_ok {
        return Err(syntax());
    }
    Ok(())
}

/// Format characters (zero-width, joiners, word joiner, BOM), bidirectional controls and
/// noncharacters: what renders as nothing or reorders the text around it.
fn invisible(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0xFDD0..=0xFDEF | 0xE0000..=0xE0FFF)
        || u32::from(c) & 0xFFFE == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_nqns() {
        for ok in [
            "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "nqn.2024-01.io.example:vmtest-subsys",
            "nqn.2014-08.org.nvmexpress.discovery",
        ] {
            validate_nqn(ok).unwrap();
        }
    }

    #[test]
    fn rejects_bad_ones_with_reason() {
        assert!(matches!(
            validate_nqn("iqn.2024-01.x:y"),
            Err(NqnError::Syntax(_))
        ));
        assert!(matches!(
            validate_nqn("nqn.2024-13.x:y"),
            Err(NqnError::Syntax(_))
        ));
        assert!(matches!(
            validate_nqn("nqn.2024-01.:y"),
            Err(NqnError::Syntax(_))
        ));
        assert!(matches!(
            validate_nqn("nqn.2024-01.x:y,traddr=1.2.3.4"),
            Err(NqnError::ForbiddenChar(_))
        ));
        assert!(matches!(
            validate_nqn("nqn.2024-01.x:y\nz"),
            Err(NqnError::ForbiddenChar(_))
        ));
        let long = format!("nqn.2024-01.io.example:{}", "a".repeat(201));
        assert_eq!(validate_nqn(&long), Err(NqnError::TooLong { len: 224 }));
        let max = format!("nqn.2024-01.io.example:{}", "a".repeat(200));
        validate_nqn(&max).unwrap();
    }
}
