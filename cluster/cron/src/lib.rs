//! CronJob schedules: a five-field cron pattern (`minute hour day-of-month month
//! day-of-week`, with ranges, steps, lists and names, day-of-month and day-of-week
//! combined as Vixie cron does) or a macro (`@yearly`, `@monthly`, `@weekly`,
//! `@daily`, `@midnight`, `@hourly`), in an IANA time zone (`spec.timeZone`, or a
//! `TZ=`/`CRON_TZ=` prefix; UTC when neither). The zone data is compiled in: nodes
//! carry no `/usr/share/zoneinfo`. The API server validates with it and the CronJob
//! controller schedules with it, so what is accepted is what runs.

use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule cannot be followed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// `spec.schedule` is not a five-field cron pattern or a known `@` macro.
    #[error("invalid schedule {schedule:?}: {reason}")]
    Schedule {
        /// The schedule as written.
        schedule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `spec.timeZone` (or a `TZ=` prefix) names no IANA time zone.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// A parsed schedule: a cron pattern in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses `schedule` (optionally prefixed `TZ=<zone> ` or `CRON_TZ=<zone> `) in
    /// `time_zone` (UTC when `None`).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let mut pattern = schedule.trim();
        let mut zone_name = time_zone.map(str::to_owned);
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = pattern.strip_prefix(prefix) {
                let (zone, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                zone_name.get_or_insert_with(|| zone.to_owned());
                pattern = rest.trim();
            }
        }
        let invalid = |reason: String| ScheduleError::Schedule {
            schedule: schedule.to_owned(),
            reason,
        };
        if pattern.eq_ignore_ascii_case("@midnight") {
            pattern = "0 0 * * *";
        }
        if pattern.starts_with("@every") {
            return Err(invalid(
                "@every is not supported; use a cron pattern".into(),
            ));
        }
        let fields = pattern.split_whitespace().count();
        if pattern.is_empty() {
            return Err(invalid("the schedule is empty".into()));
        }
        if !pattern.starts_with('@') && fields != 5 {
            return Err(invalid(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| invalid(e.to_string()))?;
        let zone = match zone_name.as_deref() {
            None | Some("") => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| ScheduleError::TimeZone(name.into()))?,
        };
        Ok(Self { cron, zone })
    }

    /// The latest scheduled time after `after` and at or before `now`, if any.
    pub fn most_recent(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Whole seconds: a pattern matches a second, and the fraction would carry
        // into the result.
        let now = now.with_nanosecond(0).unwrap_or(now);
        let local_now = now.with_timezone(&self.zone);
        let latest = self
            .cron
            .find_previous_occurrence(&local_now, true)
            .ok()?
            .with_timezone(&Utc);
        (latest > after).then_some(latest)
    }

    /// The first scheduled time after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.with_nanosecond(0).unwrap_or(after);
        let local = after.with_timezone(&self.zone);
        Some(
            self.cron
                .find_next_occurrence(&local, false)
                .ok()?
                .with_timezone(&Utc),
        )
    }

    /// `time` written in the schedule's zone (RFC 3339), for the annotation.
    pub fn local(&self, time: DateTime<Utc>) -> String {
        time.with_timezone(&self.zone).to_rfc3339()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_most_recent_missed_time_is_the_one_that_runs() {
        let every_minute = Schedule::parse("*/1 * * * *", None).unwrap();
        let due = every_minute.most_recent(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:05:30Z"));
        assert_eq!(due, Some(at("2026-01-01T00:05:00Z")));
        // A moment into the minute, the minute itself.
        assert_eq!(
            every_minute.most_recent(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:05:00.996Z")),
            Some(at("2026-01-01T00:05:00Z"))
        );
        // Nothing new since the last run.
        assert_eq!(
            every_minute.most_recent(at("2026-01-01T00:05:00Z"), at("2026-01-01T00:05:59Z")),
            None
        );
    }

    #[test]
    fn schedules_follow_their_time_zone() {
        // 09:00 in Berlin is 08:00 UTC in winter.
        let nine = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            nine.next_after(at("2026-01-10T00:00:00Z")),
            Some(at("2026-01-10T08:00:00Z"))
        );
        assert_eq!(
            nine.local(at("2026-01-10T08:00:00Z")),
            "2026-01-10T09:00:00+01:00"
        );
        let prefixed = Schedule::parse("TZ=America/New_York 30 6 * * 1-5", None).unwrap();
        // Monday 2026-01-12, 06:30 in New York is 11:30 UTC.
        assert_eq!(
            prefixed.next_after(at("2026-01-11T00:00:00Z")),
            Some(at("2026-01-12T11:30:00Z"))
        );
        let hourly = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(
            hourly.next_after(at("2026-01-10T10:15:00Z")),
            Some(at("2026-01-10T11:00:00Z"))
        );
        let midnight = Schedule::parse("@midnight", None).unwrap();
        assert_eq!(
            midnight.next_after(at("2026-01-10T10:15:00Z")),
            Some(at("2026-01-11T00:00:00Z"))
        );
    }

    #[test]
    fn bad_schedules_and_zones_say_what_is_wrong() {
        let err = Schedule::parse("* * * *", None).unwrap_err();
        assert!(err.to_string().contains("expected 5 fields"), "{err}");
        let err = Schedule::parse("0 0 * * * *", None).unwrap_err();
        assert!(err.to_string().contains("found 6"), "{err}");
        let err = Schedule::parse("61 * * * *", None).unwrap_err();
        assert!(matches!(err, ScheduleError::Schedule { .. }), "{err}");
        assert!(Schedule::parse("@every 5m", None).is_err());
        assert!(Schedule::parse("", None).is_err());
        assert_eq!(
            Schedule::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_combine_as_cron_does() {
        // Both restricted: either matches (Vixie cron). 2026-01-02 is a Friday.
        let either = Schedule::parse("0 0 13 * 5", None).unwrap();
        assert_eq!(
            either.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        // Day of month a star: only the weekday counts.
        let fridays = Schedule::parse("0 0 * * 5", None).unwrap();
        assert_eq!(
            fridays.next_after(at("2026-01-02T00:00:00Z")),
            Some(at("2026-01-09T00:00:00Z"))
        );
    }
}
