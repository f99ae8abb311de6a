//! Service hours (seed 004): up to 10 periods per agent, each weekly (weekdays + from/to) or
//! for one date (valid once), in the agent's IANA time zone. For a calendar day, every rule
//! that applies to it (its weekday's and its date's) is collected and overlapping or touching
//! windows are merged (09-12, 10-12, 13-18, 15-17 -> 09-12, 13-18). `to` may be 24:00.
//! Holidays close whole days. Times are wall-clock times, so windows follow DST changes.

use crate::model::Millis;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

pub const MAX_PERIODS: usize = 10;
const DAY_MINUTES: u16 = 24 * 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHours {
    /// IANA time zone, e.g. `Europe/Zagreb`.
    pub time_zone: String,
    #[serde(default)]
    pub periods: Vec<Period>,
    /// Dates (`YYYY-MM-DD`) on which no window applies.
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// One rule: `days` (weekly) or `date` (once), from `from` to `to` (`HH:MM`, `to` up to `24:00`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<Day>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// A window of one day in minutes since local midnight, `[from, to)`.
pub type Window = (u16, u16);

/// Checked, ready-to-use service hours.
#[derive(Debug, Clone)]
pub struct Schedule {
    tz: TimeZone,
    rules: Vec<Rule>,
    holidays: Vec<Date>,
}

#[derive(Debug, Clone)]
struct Rule {
    on: On,
    window: Window,
}

#[derive(Debug, Clone)]
enum On {
    Weekly(Vec<Weekday>),
    Once(Date),
}

/// `HH:MM` as minutes; `24:00` allowed only when `end`.
pub fn parse_minutes(s: &str, end: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if end => Some(DAY_MINUTES),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

fn parse_date(s: &str) -> Option<Date> {
    s.parse::<Date>().ok()
}

impl ServiceHours {
    /// Check everything; problems name the entry (`hours.periods[2].to`).
    pub fn compile(&self) -> Result<Schedule, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let tz = match TimeZone::get(&self.time_zone) {
            Ok(tz) => Some(tz),
            Err(_) => {
                problems.push(("hours.time_zone".to_string(), format!("unknown IANA time zone {:?}", self.time_zone)));
                None
            }
        };
        if self.periods.len() > MAX_PERIODS {
            problems.push((
                "hours.periods".to_string(),
                format!("at most {MAX_PERIODS} periods are allowed, got {}", self.periods.len()),
            ));
        }
        let mut rules = Vec::new();
        for (i, p) in self.periods.iter().enumerate() {
            let at = |f: &str| format!("hours.periods[{i}].{f}");
            let from = parse_minutes(&p.from, false);
            let to = parse_minutes(&p.to, true);
            if from.is_none() {
                problems.push((at("from"), format!("{:?} is not a time HH:MM (00:00-23:59)", p.from)));
            }
            if to.is_none() {
                problems.push((at("to"), format!("{:?} is not a time HH:MM (00:01-24:00)", p.to)));
            }
            if let (Some(f), Some(t)) = (from, to) {
                if f >= t {
                    problems.push((at("to"), format!("must be later than from ({} >= {})", p.from, p.to)));
                }
            }
            let on = match (&p.days, &p.date) {
                (Some(days), None) if !days.is_empty() => Some(On::Weekly(days.iter().map(|d| d.weekday()).collect())),
                (Some(_), None) => {
                    problems.push((at("days"), "must name at least one day".into()));
                    None
                }
                (None, Some(d)) => match parse_date(d) {
                    Some(date) => Some(On::Once(date)),
                    None => {
                        problems.push((at("date"), format!("{d:?} is not a date YYYY-MM-DD")));
                        None
                    }
                },
                (Some(_), Some(_)) => {
                    problems.push((at("date"), "give either days (weekly) or date (once), not both".into()));
                    None
                }
                (None, None) => {
                    problems.push((at("days"), "give days (weekly) or date (once)".into()));
                    None
                }
            };
            if let (Some(on), Some(f), Some(t)) = (on, from, to) {
                if f < t {
                    rules.push(Rule { on, window: (f, t) });
                }
            }
        }
        let mut holidays = Vec::new();
        for (i, h) in self.holidays.iter().enumerate() {
            match parse_date(h) {
                Some(d) => holidays.push(d),
                None => problems.push((format!("hours.holidays[{i}]"), format!("{h:?} is not a date YYYY-MM-DD"))),
            }
        }
        match (tz, problems.is_empty()) {
            (Some(tz), true) => Ok(Schedule { tz, rules, holidays }),
            _ => Err(problems),
        }
    }
}

/// Sort and merge windows that overlap or touch.
pub fn merge(mut windows: Vec<Window>) -> Vec<Window> {
    windows.sort_unstable();
    let mut out: Vec<Window> = Vec::with_capacity(windows.len());
    for (f, t) in windows {
        match out.last_mut() {
            Some(last) if f <= last.1 => last.1 = last.1.max(t),
            _ => out.push((f, t)),
        }
    }
    out
}

impl Schedule {
    /// The merged service windows of a calendar day.
    pub fn windows_on(&self, date: Date) -> Vec<Window> {
        if self.holidays.contains(&date) {
            return Vec::new();
        }
        let wd = date.weekday();
        let applying = self.rules.iter().filter(|r| match &r.on {
            On::Weekly(days) => days.contains(&wd),
            On::Once(d) => *d == date,
        });
        merge(applying.map(|r| r.window).collect())
    }

    fn local(&self, at: Millis) -> Option<(Date, u16)> {
        let z = jiff::Timestamp::from_millisecond(at.0).ok()?.to_zoned_datetime(self.tz.clone());
        let t = z.time();
        Some((z.date(), t.hour() as u16 * 60 + t.minute() as u16))
    }

    /// Open at this instant (wall-clock time in the agent's zone within a window).
    pub fn is_open(&self, at: Millis) -> bool {
        match self.local(at) {
            Some((date, minute)) => self.windows_on(date).iter().any(|(f, t)| *f <= minute && minute < *t),
            None => false,
        }
    }

    /// The next instant after `at` at which a window opens, within a year.
    pub fn next_opening(&self, at: Millis) -> Option<Millis> {
        let (mut date, _) = self.local(at)?;
        for _ in 0..=370 {
            for (f, _) in self.windows_on(date) {
                let time = jiff::civil::Time::new((f / 60) as i8, (f % 60) as i8, 0, 0).ok()?;
                // A start in a DST gap has no instant of its own: the window really opens at
                // the first minute between its two readings (before and after the shift) that
                // is open, e.g. 03:00 for a 02:15-03:15 window on a 02:00 -> 03:00 day. Outside
                // gaps both readings are the same instant; a window wholly inside a gap never opens.
                let ambiguous = self.tz.to_ambiguous_timestamp(date.to_datetime(time));
                let first = ambiguous.earlier().ok()?.as_millisecond();
                let last = ambiguous.later().ok()?.as_millisecond();
                let mut t = first;
                while t <= last {
                    if t > at.0 && self.is_open(Millis(t)) {
                        return Some(Millis(t));
                    }
                    t += 60_000;
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// `2024-12-12 09:00 (Europe/Zagreb)`: how the next opening is shown to users.
    pub fn describe(&self, at: Millis) -> String {
        match jiff::Timestamp::from_millisecond(at.0) {
            Ok(ts) => {
                let z = ts.to_zoned_datetime(self.tz.clone());
                format!(
                    "{} {:02}:{:02} ({})",
                    z.date(),
                    z.time().hour(),
                    z.time().minute(),
                    self.tz.iana_name().unwrap_or("UTC")
                )
            }
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(periods: Vec<Period>) -> ServiceHours {
        ServiceHours { time_zone: "Europe/Zagreb".into(), periods, holidays: vec![] }
    }

    fn weekly(days: &[Day], from: &str, to: &str) -> Period {
        Period { days: Some(days.to_vec()), date: None, from: from.into(), to: to.into() }
    }

    fn once(date: &str, from: &str, to: &str) -> Period {
        Period { days: None, date: Some(date.into()), from: from.into(), to: to.into() }
    }

    fn ms(s: &str) -> Millis {
        Millis(s.parse::<jiff::ZonedDateTime>().unwrap().timestamp().as_millisecond())
    }

    #[test]
    fn the_seed_example_merges_to_two_windows() {
        // 2024-12-12 is a Thursday.
        let h = hours(vec![
            once("2024-12-12", "09:00", "12:00"),
            once("2024-12-12", "10:00", "12:00"),
            weekly(&[Day::Thu], "13:00", "18:00"),
            once("2024-12-12", "15:00", "17:00"),
        ]);
        let s = h.compile().unwrap();
        assert_eq!(s.windows_on("2024-12-12".parse().unwrap()), vec![(540, 720), (780, 1080)]);
        assert_eq!(s.windows_on("2024-12-19".parse().unwrap()), vec![(780, 1080)], "the dated rules apply once");
    }

    #[test]
    fn touching_windows_merge_and_24_00_is_end_of_day() {
        assert_eq!(merge(vec![(600, 720), (540, 600), (1200, 1440)]), vec![(540, 720), (1200, 1440)]);
        assert_eq!(parse_minutes("24:00", true), Some(1440));
        assert_eq!(parse_minutes("24:00", false), None);
        assert_eq!(parse_minutes("9:00", false), None);
        assert_eq!(parse_minutes("23:60", true), None);
    }

    #[test]
    fn open_and_next_opening_in_local_time() {
        let s = hours(vec![weekly(&[Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri], "09:00", "17:00")])
            .compile()
            .unwrap();
        assert!(s.is_open(ms("2024-12-12T09:00:00+01:00[Europe/Zagreb]")));
        assert!(!s.is_open(ms("2024-12-12T17:00:00+01:00[Europe/Zagreb]")));
        assert!(!s.is_open(ms("2024-12-14T10:00:00+01:00[Europe/Zagreb]")), "Saturday");
        let next = s.next_opening(ms("2024-12-13T18:00:00+01:00[Europe/Zagreb]")).unwrap();
        assert_eq!(next, ms("2024-12-16T09:00:00+01:00[Europe/Zagreb]"));
        assert_eq!(s.describe(next), "2024-12-16 09:00 (Europe/Zagreb)");
    }

    #[test]
    fn windows_follow_the_wall_clock_across_dst() {
        // 2025-03-30: Europe/Zagreb moves from +01:00 to +02:00.
        let s = hours(vec![weekly(&[Day::Sun, Day::Mon], "09:00", "10:00")]).compile().unwrap();
        assert!(s.is_open(ms("2025-03-30T09:30:00+02:00[Europe/Zagreb]")));
        assert!(s.is_open(ms("2025-03-31T07:30:00+00:00[UTC]")), "07:30 UTC is 09:30 summer time");
        assert!(!s.is_open(ms("2025-03-31T08:30:00+00:00[UTC]")), "08:30 UTC was 09:30 in winter, is 10:30 now");
        assert!(s.is_open(ms("2025-03-24T08:30:00+00:00[UTC]")), "a week earlier 08:30 UTC is 09:30 winter time");
    }

    #[test]
    fn a_window_starting_in_a_dst_gap_opens_when_the_clock_gets_there() {
        // 2025-03-09, New York: 02:00 EST jumps to 03:00 EDT. 02:15-03:15 is open 03:00-03:15.
        let mut h = hours(vec![weekly(&[Day::Sun], "02:15", "03:15")]);
        h.time_zone = "America/New_York".into();
        let s = h.compile().unwrap();
        let next = s.next_opening(ms("2025-03-08T12:00:00-05:00[America/New_York]")).unwrap();
        assert_eq!(next, ms("2025-03-09T03:00:00-04:00[America/New_York]"));
        assert!(s.is_open(next));
        // Wholly inside the gap: never open that day, so the next Sunday's window is next.
        let mut h = hours(vec![weekly(&[Day::Sun], "02:10", "02:50")]);
        h.time_zone = "America/New_York".into();
        let s = h.compile().unwrap();
        let next = s.next_opening(ms("2025-03-08T12:00:00-05:00[America/New_York]")).unwrap();
        assert_eq!(next, ms("2025-03-16T02:10:00-04:00[America/New_York]"));
    }

    #[test]
    fn holidays_close_the_day() {
        let mut h = hours(vec![weekly(&[Day::Wed], "09:00", "17:00")]);
        h.holidays = vec!["2024-12-25".into()];
        let s = h.compile().unwrap();
        assert!(s.windows_on("2024-12-25".parse().unwrap()).is_empty());
        assert!(!s.windows_on("2025-01-01".parse().unwrap()).is_empty());
    }

    #[test]
    fn validation_names_each_entry() {
        let mut periods: Vec<Period> = (0..11).map(|_| weekly(&[Day::Mon], "09:00", "10:00")).collect();
        periods[1] = weekly(&[Day::Mon], "12:00", "12:00");
        periods[2] = once("2024-13-01", "09:00", "10:00");
        periods[3] = Period { days: None, date: None, from: "09:00".into(), to: "25:00".into() };
        let mut h = ServiceHours { time_zone: "Mars/Olympus".into(), periods, holidays: vec!["tomorrow".into()] };
        let problems: Vec<String> = h.compile().unwrap_err().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            problems,
            vec![
                "hours.time_zone",
                "hours.periods",
                "hours.periods[1].to",
                "hours.periods[2].date",
                "hours.periods[3].to",
                "hours.periods[3].days",
                "hours.holidays[0]",
            ]
        );
        h.time_zone = "America/New_York".into();
        h.periods.truncate(1);
        h.holidays.clear();
        assert!(h.compile().is_ok());
    }
}
