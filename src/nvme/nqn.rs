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
