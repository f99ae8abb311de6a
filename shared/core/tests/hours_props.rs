//! Property tests of service hours: window merging, and "is open at instant t" against a
//! brute-force minute-by-minute oracle that reads every rule directly, across DST changes
//! in zones with 1-hour and 30-minute shifts.

use baton_core::hours::{merge, Day, Period, ServiceHours, Window};
use baton_core::Millis;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use proptest::prelude::*;

const ZONES: &[&str] =
    &["Europe/Zagreb", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "Asia/Shanghai", "UTC"];
/// Days around DST changes: (zone-independent) start dates of the 3-day scan.
const STARTS: &[&str] =
    &["2025-03-29", "2025-10-25", "2025-03-08", "2025-11-01", "2025-04-05", "2025-10-04", "2024-12-11"];
const DAYS: [Day; 7] = [Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri, Day::Sat, Day::Sun];

fn hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn window() -> impl Strategy<Value = (u16, u16)> {
    // Quarter hours, so windows land on and around DST gaps (02:00-03:00).
    (0u16..96, 1u16..=96).prop_map(|(a, len)| {
        let from = a * 15;
        let to = (from + len * 15).min(1440);
        (from, if to == from { from + 15 } else { to })
    })
}

fn period(start: Date) -> impl Strategy<Value = Period> {
    let weekly = (prop::collection::vec(0usize..7, 1..4), window()).prop_map(|(ds, (f, t))| Period {
        days: Some(ds.into_iter().map(|i| DAYS[i]).collect()),
        date: None,
        from: hhmm(f),
        to: hhmm(t),
    });
    let once = (0i32..3, window()).prop_map(move |(off, (f, t))| Period {
        days: None,
        date: Some(start.checked_add(jiff::Span::new().days(off)).unwrap().to_string()),
        from: hhmm(f),
        to: hhmm(t),
    });
    prop_oneof![weekly, once]
}

fn hours() -> impl Strategy<Value = (ServiceHours, Date)> {
    (0..ZONES.len(), 0..STARTS.len()).prop_flat_map(|(z, s)| {
        let start: Date = STARTS[s].parse().unwrap();
        (prop::collection::vec(period(start), 0..=10), prop::option::of(0i32..3)).prop_map(move |(periods, holiday)| {
            let holidays = holiday
                .map(|h| start.checked_add(jiff::Span::new().days(h)).unwrap().to_string())
                .into_iter()
                .collect();
            (ServiceHours { time_zone: ZONES[z].into(), periods, holidays }, start)
        })
    })
}

/// The rules read directly, without merging: open when any rule of that calendar day
/// contains the wall-clock minute.
fn oracle(h: &ServiceHours, tz: &TimeZone, at: i64) -> bool {
    let z = jiff::Timestamp::from_millisecond(at).unwrap().to_zoned_datetime(tz.clone());
    let date = z.date();
    if h.holidays.iter().any(|d| d.parse::<Date>().unwrap() == date) {
        return false;
    }
    let minute = z.time().hour() as u16 * 60 + z.time().minute() as u16;
    h.periods.iter().any(|p| {
        let applies = match (&p.days, &p.date) {
            (Some(days), None) => days
                .iter()
                .any(|d| DAYS.iter().position(|x| x == d).unwrap() as i8 + 1 == date.weekday().to_monday_one_offset()),
            (None, Some(d)) => d.parse::<Date>().unwrap() == date,
            _ => false,
        };
        let from = baton_core::hours::parse_minutes(&p.from, false).unwrap();
        let to = baton_core::hours::parse_minutes(&p.to, true).unwrap();
        applies && from <= minute && minute < to
    })
}

fn covered(ws: &[Window]) -> Vec<bool> {
    let mut m = vec![false; 1441];
    for (f, t) in ws {
        for x in *f..*t {
            m[x as usize] = true;
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn merged_windows_are_sorted_disjoint_and_cover_the_same_minutes(ws in prop::collection::vec(window(), 0..12)) {
        let merged = merge(ws.clone());
        for pair in merged.windows(2) {
            prop_assert!(pair[0].1 < pair[1].0, "overlapping or touching windows left: {merged:?}");
        }
        prop_assert_eq!(covered(&merged), covered(&ws));
    }

    #[test]
    fn is_open_matches_the_minute_by_minute_oracle((h, start) in hours()) {
        let schedule = h.compile().unwrap();
        let tz = TimeZone::get(&h.time_zone).unwrap();
        let from = start.to_datetime(jiff::civil::Time::midnight()).to_zoned_datetime(tz.clone()).unwrap().timestamp().as_millisecond();
        let mut opens = 0;
        for minute in 0..(3 * 24 * 60 + 120) {
            let at = from + minute * 60_000;
            let want = oracle(&h, &tz, at);
            prop_assert_eq!(schedule.is_open(Millis(at)), want, "at {} ({})", at, jiff::Timestamp::from_millisecond(at).unwrap().to_zoned_datetime(tz.clone()));
            opens += want as u32;
        }
        // The next opening from any closed minute is open, and nothing before it is.
        let probe = from + 7 * 60_000;
        if !oracle(&h, &tz, probe) {
            if let Some(next) = schedule.next_opening(Millis(probe)) {
                prop_assert!(schedule.is_open(next), "next opening {} is not open", next.0);
                let mut t = probe + 60_000 - probe % 60_000;
                while t < next.0 && t < probe + 3 * 86_400_000 {
                    prop_assert!(!oracle(&h, &tz, t), "open at {} before the next opening {}", t, next.0);
                    t += 60_000;
                }
            } else {
                prop_assert_eq!(opens, 0);
            }
        }
    }
}
