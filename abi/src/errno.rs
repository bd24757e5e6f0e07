//! Linux errno values. Host hypercalls return `-(errno)` in `x0` on failure.

/// One error enum for the whole system, named and numbered after Linux.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i64)]
pub enum Errno {
    EPERM = 1,
    ENOENT = 2,
    E2BIG = 7,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EFAULT = 14,
    EBUSY = 16,
    EEXIST = 17,
    ENODEV = 19,
    EINVAL = 22,
    ENOSPC = 28,
    ERANGE = 34,
    ENOSYS = 38,
    EOPNOTSUPP = 95,
}

impl Errno {
    const ALL: [Errno; 15] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::E2BIG,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::EACCES,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::ENODEV,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::ERANGE,
        Errno::ENOSYS,
        Errno::EOPNOTSUPP,
    ];

    /// The positive errno number.
    pub const fn code(self) -> i64 {
        self as i64
    }

    /// The value a hypercall puts in `x0` for this error: `-(errno)` as a register.
    pub const fn to_reg(self) -> u64 {
        (-(self as i64)) as u64
    }

    /// Decodes a positive errno number.
    pub fn from_code(code: i64) -> Option<Errno> {
        Self::ALL.iter().copied().find(|e| e.code() == code)
    }

    /// Decodes a register that may hold `-(errno)`. `None` for non-negative or unknown values.
    pub fn from_reg(reg: u64) -> Option<Errno> {
        let v = reg as i64;
        if v < 0 {
            Self::from_code(-v)
        } else {
            None
        }
    }

    /// The Linux name, e.g. `"EINVAL"`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::E2BIG => "E2BIG",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::ENODEV => "ENODEV",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ERANGE => "ERANGE",
            Errno::ENOSYS => "ENOSYS",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
        }
    }

    /// Parses a Linux name, e.g. `"EAGAIN"`.
    pub fn from_name(name: &str) -> Option<Errno> {
        Self::ALL.iter().copied().find(|e| e.name() == name)
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_register_and_name() {
        for e in Errno::ALL {
            assert_eq!(Errno::from_reg(e.to_reg()), Some(e));
            assert_eq!(Errno::from_name(e.name()), Some(e));
        }
        assert_eq!(Errno::from_reg(0), None);
        assert_eq!(Errno::from_reg(5), None);
        assert_eq!(Errno::EINVAL.to_reg(), (-22i64) as u64);
    }
}
