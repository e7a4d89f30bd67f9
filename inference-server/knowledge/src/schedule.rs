//! `spec.schedule` in local mode: a five-field cron expression (minute, hour, day of month,
//! month, day of week; UTC), checked once a minute, as a Kubernetes CronJob reads it in a
//! cluster. Fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists; day
//! of week 0 or 7 is Sunday. As in cron, when both day fields are restricted, either may match.

use std::time::{SystemTime, UNIX_EPOCH};

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// A moment broken into the fields a schedule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    /// 0–59.
    pub minute: u32,
    /// 0–23.
    pub hour: u32,
    /// 1–31.
    pub day: u32,
    /// 1–12.
    pub month: u32,
    /// 0–6, Sunday 0.
    pub weekday: u32,
}

impl Moment {
    /// The UTC moment of a Unix time.
    pub fn from_unix(seconds: u64) -> Self {
        let days = seconds / 86_400;
        let of_day = seconds % 86_400;
        // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Self {
            minute: ((of_day / 60) % 60) as u32,
            hour: (of_day / 3600) as u32,
            day,
            month,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4) % 7) as u32,
        }
    }

    /// Now, in UTC.
    pub fn now() -> Self {
        Self::from_unix(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
    }
}

fn field(text: &str, name: &str, min: u32, max: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("{name}: `{step}` is not a step"))?;
                if step == 0 {
                    return Err(format!("{name}: a step must be at least 1"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let number = |s: &str| -> Result<u32, String> {
            let n: u32 = s.parse().map_err(|_| format!("{name}: `{s}` is not a number"))?;
            if n < min || n > max {
                return Err(format!("{name}: {n} is outside {min}–{max}"));
            }
            Ok(n)
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step > 1 => (number(range)?, max),
                None => {
                    let n = number(range)?;
                    (n, n)
                }
            },
        };
        if low > high {
            return Err(format!("{name}: the range {low}-{high} is backwards"));
        }
        for value in (low..=high).step_by(step as usize) {
            bits |= 1 << value;
        }
    }
    // As in cron, a field that starts with `*` (`*`, `*/15`) leaves the day rule unrestricted.
    Ok((bits, !text.starts_with('*')))
}

impl Schedule {
    /// Parses five fields; the error names the field at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("`{other}` is not a known macro (@yearly, @monthly, @weekly, @daily, @hourly)"));
            }
            other => other,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!("expected five fields (minute hour day month weekday), got {}", fields.len()));
        };
        let (minutes, _) = field(minute, "minute", 0, 59)?;
        let (hours, _) = field(hour, "hour", 0, 23)?;
        let (days, days_restricted) = field(day, "day of month", 1, 31)?;
        let (months, _) = field(month, "month", 1, 12)?;
        let (mut weekdays, weekdays_restricted) = field(weekday, "day of week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self { minutes, hours, days, months, weekdays, days_restricted, weekdays_restricted })
    }

    /// Whether the schedule fires at this minute.
    pub fn matches(&self, at: Moment) -> bool {
        let has = |bits: u64, value: u32| bits & (1 << value) != 0;
        let day = has(self.days, at.day);
        let weekday = has(self.weekdays, at.weekday);
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            _ => day && weekday,
        };
        has(self.minutes, at.minute) && has(self.hours, at.hour) && has(self.months, at.month) && day_ok
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_become_utc_calendar_fields() {
        // 2026-11-25T06:45:00Z, a Wednesday.
        assert_eq!(Moment::from_unix(1_795_589_100), Moment { minute: 45, hour: 6, day: 25, month: 11, weekday: 3 });
        // 2024-02-29T23:59:00Z, a Thursday (leap day).
        assert_eq!(Moment::from_unix(1_709_251_140), Moment { minute: 59, hour: 23, day: 29, month: 2, weekday: 4 });
    }

    #[test]
    fn fields_match_like_cron() {
        let at = |minute, hour, day, month, weekday| Moment { minute, hour, day, month, weekday };
        let nightly = Schedule::parse("0 3 * * *").unwrap();
        assert!(nightly.matches(at(0, 3, 9, 5, 2)));
        assert!(!nightly.matches(at(1, 3, 9, 5, 2)));
        let every_15 = Schedule::parse("*/15 8-17 * * 1-5").unwrap();
        assert!(every_15.matches(at(45, 17, 1, 1, 5)));
        assert!(!every_15.matches(at(45, 17, 1, 1, 6)));
        assert!(!every_15.matches(at(50, 9, 1, 1, 1)));
        let sundays = Schedule::parse("30 2 * * 7").unwrap();
        assert!(sundays.matches(at(30, 2, 4, 4, 0)));
        // Both day fields restricted: either matches.
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(either.matches(at(0, 0, 1, 3, 4)) && either.matches(at(0, 0, 9, 3, 1)));
        assert!(!either.matches(at(0, 0, 9, 3, 2)));
        // A stepped day field is unrestricted, as in cron: both day rules must hold.
        let odd_days = Schedule::parse("0 0 */2 * 1").unwrap();
        assert!(odd_days.matches(at(0, 0, 3, 3, 1)) && !odd_days.matches(at(0, 0, 3, 3, 2)));
        assert_eq!(Schedule::parse("@daily").unwrap(), Schedule::parse("0 0 * * *").unwrap());
        assert!(Schedule::parse("@hourly").unwrap().matches(at(0, 7, 3, 3, 2)));
        let list = Schedule::parse("5,10 0 * 1,6 *").unwrap();
        assert!(list.matches(at(10, 0, 3, 6, 2)) && !list.matches(at(10, 0, 3, 7, 2)));
    }

    #[test]
    fn bad_schedules_name_the_field() {
        assert!(Schedule::parse("0 3 * *").unwrap_err().contains("five fields"));
        assert!(Schedule::parse("60 3 * * *").unwrap_err().contains("minute: 60 is outside"));
        assert!(Schedule::parse("0 3 * * mon").unwrap_err().contains("day of week"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("step"));
        assert!(Schedule::parse("0 5-2 * * *").unwrap_err().contains("backwards"));
        assert!(Schedule::parse("@fortnightly").unwrap_err().contains("macro"));
    }
}
