//! PostgreSQL dates and times on the wire: microseconds / days since 2000-01-01.

use super::ValueError;

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_UNIX_DAYS: i64 = 10_957;
const MICROS_PER_SECOND: i64 = 1_000_000;
/// Microseconds in a day: the largest `time` value (`24:00:00`).
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// A calendar date (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilDate {
    /// The year.
    pub year: i32,
    /// The month, 1 to 12.
    pub month: u32,
    /// The day of the month, from 1.
    pub day: u32,
}

/// An instant, in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixMicros(pub i64);

impl UnixMicros {
    /// From a protobuf Timestamp; nanoseconds must be whole microseconds.
    pub fn from_timestamp(ts: &prost_types::Timestamp) -> Result<Self, ValueError> {
        if !(0..1_000_000_000).contains(&ts.nanos) || ts.nanos % 1000 != 0 {
            return Err(ValueError::TimestampPrecision);
        }
        ts.seconds
            .checked_mul(MICROS_PER_SECOND)
            .and_then(|micros| micros.checked_add(i64::from(ts.nanos / 1000)))
            .map(Self)
            .ok_or(ValueError::OutOfRange("timestamp"))
    }

    /// As a protobuf Timestamp.
    pub fn to_timestamp(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.0.div_euclid(MICROS_PER_SECOND),
            // In 0..1_000_000_000, so the cast cannot truncate.
            nanos: (self.0.rem_euclid(MICROS_PER_SECOND) * 1000) as i32,
        }
    }

    /// From PostgreSQL's wire value; `infinity` / `-infinity` are refused.
    pub fn from_pg(pg: i64) -> Result<Self, ValueError> {
        if pg == i64::MAX || pg == i64::MIN {
            return Err(ValueError::Infinite);
        }
        pg.checked_add(PG_EPOCH_UNIX_SECONDS * MICROS_PER_SECOND)
            .map(Self)
            .ok_or(ValueError::OutOfRange("timestamp"))
    }

    /// To PostgreSQL's wire value: microseconds since 2000-01-01 00:00:00.
    pub fn to_pg(self) -> Result<i64, ValueError> {
        self.0
            .checked_sub(PG_EPOCH_UNIX_SECONDS * MICROS_PER_SECOND)
            .ok_or(ValueError::OutOfRange("timestamp"))
    }
}

impl CivilDate {
    /// A date, or [`ValueError::InvalidDate`] if the day does not exist.
    pub fn new(year: i32, month: u32, day: u32) -> Result<Self, ValueError> {
        let date = Self { year, month, day };
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(ValueError::InvalidDate);
        }
        Ok(date)
    }

    /// From PostgreSQL's wire value (days since 2000-01-01); infinities are refused.
    pub fn from_pg(pg_days: i32) -> Result<Self, ValueError> {
        if pg_days == i32::MAX || pg_days == i32::MIN {
            return Err(ValueError::Infinite);
        }
        Ok(civil_from_days(i64::from(pg_days) + PG_EPOCH_UNIX_DAYS))
    }

    /// To PostgreSQL's wire value: days since 2000-01-01.
    pub fn to_pg(self) -> Result<i32, ValueError> {
        i32::try_from(days_from_civil(self) - PG_EPOCH_UNIX_DAYS)
            .map_err(|_| ValueError::OutOfRange("date"))
    }
}

fn is_leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(date: CivilDate) -> i64 {
    let year = i64::from(date.year) - i64::from(date.month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(date.month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(date.day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> CivilDate {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // PostgreSQL dates span about +-5.8 million years: these fit.
    CivilDate {
        year: year as i32,
        month: month as u32,
        day: day as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_pg_days() {
        let epoch = CivilDate::new(2000, 1, 1).expect("valid");
        assert_eq!(epoch.to_pg().expect("fits"), 0);
        for (y, m, d) in [
            (1970, 1, 1),
            (2024, 2, 29),
            (1, 1, 1),
            (-44, 3, 15),
            (9999, 12, 31),
        ] {
            let date = CivilDate::new(y, m, d).expect("valid");
            assert_eq!(
                CivilDate::from_pg(date.to_pg().expect("fits")).expect("finite"),
                date
            );
        }
        assert_eq!(
            CivilDate::new(1970, 1, 1)
                .expect("valid")
                .to_pg()
                .expect("fits"),
            -10_957
        );
    }

    #[test]
    fn invalid_dates_are_refused() {
        assert!(CivilDate::new(2023, 2, 29).is_err());
        assert!(CivilDate::new(2023, 13, 1).is_err());
        assert!(CivilDate::new(2023, 4, 31).is_err());
    }

    #[test]
    fn timestamps_convert_both_ways() {
        let ts = prost_types::Timestamp {
            seconds: -1,
            nanos: 500_000,
        };
        let micros = UnixMicros::from_timestamp(&ts).expect("valid");
        assert_eq!(micros, UnixMicros(-999_500));
        assert_eq!(micros.to_timestamp(), ts);
        assert_eq!(
            UnixMicros::from_pg(0).expect("finite").0,
            946_684_800_000_000
        );
        assert!(UnixMicros::from_pg(i64::MAX).is_err());
        assert!(
            UnixMicros::from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: 1
            })
            .is_err()
        );
    }
}
