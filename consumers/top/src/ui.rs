//! The screen of tapbus-top, the last step of the arrow bus --JSON--> terminal: a
//! [`Snapshot`] of the model and the [`Status`] of the program rendered into a ratatui
//! `Frame`, and the keys that switch views and set the filter ([`App::key`]).
//!
//! Pure code: no terminal here (the binary owns it; the tests render into ratatui's
//! `TestBackend`). Laid out for 80x24 first: one title line with the views, one summary
//! line, the view, and one status line; a larger terminal shows more rows.

use ratatui::Frame;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row as TRow, Table};
use tapbus_event::Operation;

use crate::prom::BrokerHealth;
use crate::stats::{Filter, LatencySummary, Percentiles, Row, Snapshot};

/// The views, in key order (`1` .. `8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Overview,
    Qnames,
    Clients,
    Domains,
    Codes,
    Latency,
    Broker,
    Geo,
}

impl View {
    pub const ALL: [View; 8] = [
        View::Overview,
        View::Qnames,
        View::Clients,
        View::Domains,
        View::Codes,
        View::Latency,
        View::Broker,
        View::Geo,
    ];

    /// The tab's name.
    pub fn name(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Qnames => "Qnames",
            View::Clients => "Clients",
            View::Domains => "Domains",
            View::Codes => "Rcodes",
            View::Latency => "Latency",
            View::Broker => "Broker",
            View::Geo => "Geo",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// The connection to the bus, as the status line shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Up,
    Down,
    /// The subscription ended (the reason).
    Ended(String),
}

/// The broker scrape, as the broker view shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerStatus {
    /// The `/metrics` URL.
    pub url: String,
    /// The last good scrape.
    pub health: Option<BrokerHealth>,
    /// Why the last scrape failed, if it did.
    pub error: Option<String>,
    /// Scrapes done and failed.
    pub scrapes: u64,
    pub failures: u64,
}

/// What the program knows beside the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The bus URL.
    pub input: String,
    pub conn: Conn,
    /// `--broker-metrics`, if given.
    pub broker: Option<BrokerStatus>,
}

/// The UI's own state: view, filter being typed, pause, help, scroll.
#[derive(Clone, Debug, Default)]
pub struct App {
    pub view: ViewState,
    /// Frozen: the screen keeps its snapshot (the model keeps counting).
    pub paused: bool,
    pub help: bool,
    /// The qname filter being typed after `/`.
    pub editing: Option<String>,
    pub quit: bool,
    /// The filter the user asked for (the binary hands it to the model).
    pub filter: Filter,
    /// First row shown in the top tables.
    pub scroll: usize,
}

/// The current view (a newtype so `App` can derive `Default`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewState(pub View);

impl Default for ViewState {
    fn default() -> Self {
        ViewState(View::Overview)
    }
}

impl App {
    /// The view shown.
    pub fn current(&self) -> View {
        self.view.0
    }

    /// Handles one key; `identities` and `operations` are what `i` and `o` cycle through.
    pub fn key(&mut self, k: KeyEvent, identities: &[String], operations: &[Operation]) {
        if k.kind != KeyEventKind::Press {
            return;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(buf) = &mut self.editing {
            match k.code {
                // A text the filter refuses (none of at most 253 characters is) stays in
                // the editor.
                KeyCode::Enter if self.filter.set_qname(buf).is_ok() => self.editing = None,
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    buf.pop();
                }
                KeyCode::Char(c) if !c.is_control() && buf.len() < 253 => buf.push(c),
                _ => {}
            }
            return;
        }
        if self.help {
            // Any key closes the help (q still quits).
            self.help = false;
            if k.code != KeyCode::Char('q') {
                return;
            }
        }
        let n = View::ALL.len();
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = true,
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char(c @ '1'..='8') => {
                self.set_view(View::ALL[usize::from(c as u8 - b'1')]);
            }
            KeyCode::Tab | KeyCode::Right => {
                self.set_view(View::ALL[(self.current().index() + 1) % n]);
            }
            KeyCode::BackTab | KeyCode::Left => {
                self.set_view(View::ALL[(self.current().index() + n - 1) % n]);
            }
            KeyCode::Char('/') => {
                self.editing = Some(self.filter.qname().unwrap_or_default().to_owned())
            }
            KeyCode::Char('i') => {
                let next = cycle(&self.filter.identity().map(str::to_owned), identities);
                self.filter.set_identity(next);
            }
            KeyCode::Char('o') => {
                let next = cycle(&self.filter.operation(), operations);
                self.filter.set_operation(next);
            }
            KeyCode::Char('c') => self.filter.clear(),
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Home => self.scroll = 0,
            _ => {}
        }
    }

    fn set_view(&mut self, v: View) {
        if v != self.current() {
            self.view = ViewState(v);
            self.scroll = 0;
        }
    }
}

/// `None` -> first -> ... -> last -> `None`.
fn cycle<T: Clone + PartialEq>(cur: &Option<T>, all: &[T]) -> Option<T> {
    match cur {
        None => all.first().cloned(),
        Some(c) => match all.iter().position(|x| x == c) {
            Some(i) => all.get(i + 1).cloned(),
            None => all.first().cloned(),
        },
    }
}

const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const REV: Style = Style::new().add_modifier(Modifier::REVERSED);

/// Draws everything.
pub fn render(f: &mut Frame, app: &App, snap: &Snapshot, status: &Status) {
    let [title, summary, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(tabs(app.current(), title.width)), title);
    f.render_widget(Paragraph::new(summary_line(snap)), summary);
    match app.current() {
        View::Overview => overview(f, body, snap),
        View::Qnames => top_table(
            f,
            body,
            "Top qnames",
            &snap.qnames,
            snap.evicted.0,
            app.scroll,
            snap,
        ),
        View::Clients => top_table(
            f,
            body,
            "Top clients",
            &snap.clients,
            snap.evicted.1,
            app.scroll,
            snap,
        ),
        View::Domains => top_table(
            f,
            body,
            "Top registered domains",
            &snap.domains,
            snap.evicted.2,
            app.scroll,
            snap,
        ),
        View::Codes => codes(f, body, snap),
        View::Latency => latency(f, body, snap),
        View::Broker => broker(f, body, status.broker.as_ref()),
        View::Geo => geo(f, body, app.scroll, snap),
    }
    f.render_widget(Paragraph::new(status_line(app, snap, status)), foot);
    if app.help {
        help(f, f.area());
    }
}

/// The view tabs after the program's name, `top` when `tapbus-top` would not leave room
/// for every tab.
fn tabs(cur: View, width: u16) -> Line<'static> {
    let names: usize = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{}:{} ", i + 1, v.name()).len())
        .sum();
    let name = if names + "tapbus-top ".len() <= usize::from(width) {
        "tapbus-top "
    } else {
        "top "
    };
    let mut spans = vec![Span::styled(name, BOLD)];
    for (i, v) in View::ALL.iter().enumerate() {
        let text = format!("{}:{}", i + 1, v.name());
        spans.push(if *v == cur {
            Span::styled(text, REV)
        } else {
            Span::raw(text)
        });
        spans.push(Span::raw(" "));
    }
    Line::from(spans)
}

fn summary_line(s: &Snapshot) -> Line<'static> {
    let rc = |k: &str| Snapshot::row(&s.rcodes, k).map_or(0.0, |r| r.share);
    Line::from(format!(
        "q/s {}  ev/s {}  NXDOMAIN {:.1}%  SERVFAIL {:.1}%  p95 {}  filter: {}",
        rate(s.queries.1),
        rate(s.events.1),
        rc("NXDOMAIN"),
        rc("SERVFAIL"),
        lat(s.served.window.p95, s.served.window.count),
        s.filter.describe()
    ))
}

fn status_line(app: &App, snap: &Snapshot, st: &Status) -> Line<'static> {
    if let Some(buf) = &app.editing {
        return Line::from(vec![
            Span::styled(" qname contains: ", REV),
            Span::raw(format!(" {buf}_  (Enter apply, Esc cancel, empty clears)")),
        ]);
    }
    let conn = match &st.conn {
        Conn::Connecting => "connecting".to_string(),
        Conn::Up => "up".to_string(),
        Conn::Down => "DOWN".to_string(),
        Conn::Ended(why) => format!("ENDED: {why}"),
    };
    let paused = if app.paused { " PAUSED |" } else { "" };
    Line::from(Span::styled(
        format!(
            "{} {conn} |{paused} {} ev/s | events {} | bad {} | ?:help q:quit",
            st.input,
            rate(snap.events_rate),
            count(snap.events_total),
            count(snap.bad),
        ),
        REV,
    ))
}

/// A rate, one decimal under 1000/s.
fn rate(r: f64) -> String {
    if r < 1000.0 {
        format!("{r:.1}")
    } else if r < 1e6 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{:.1}M", r / 1e6)
    }
}

/// A count, exact below a million.
fn count(n: u64) -> String {
    if n < 1_000_000 {
        n.to_string()
    } else if n < 1_000_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        format!("{:.1}G", n as f64 / 1e9)
    }
}

/// A latency in microseconds; `-` without data.
fn lat(us: u64, n: u64) -> String {
    if n == 0 {
        "-".into()
    } else if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn pct(p: f64) -> String {
    format!("{p:.1}%")
}

fn header(cells: &[&'static str]) -> TRow<'static> {
    TRow::new(cells.iter().map(|c| Cell::from(*c))).style(BOLD)
}

/// A small table of `rows`: key, count, share, rate.
fn counts_table<'a>(title: String, first: &'static str, rows: &[Row], max: usize) -> Table<'a> {
    let body: Vec<TRow> = rows
        .iter()
        .take(max)
        .map(|r| {
            TRow::new(vec![
                Cell::from(r.key.clone()),
                Cell::from(count(r.count)),
                Cell::from(pct(r.share)),
                Cell::from(rate(r.rate)),
            ])
        })
        .collect();
    Table::new(
        body,
        [
            Constraint::Fill(1),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
        ],
    )
    .header(header(&[first, "count", "%", "/s"]))
    .block(Block::bordered().title(title))
}

/// Rows that fit a bordered table of `area` with a header.
fn fit(area: Rect) -> usize {
    usize::from(area.height.saturating_sub(3))
}

fn overview(f: &mut Frame, area: Rect, s: &Snapshot) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let [servers, ops] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(left);
    f.render_widget(
        counts_table(servers_title(s), "identity", &s.by_identity, fit(servers)),
        servers,
    );
    f.render_widget(
        counts_table("Operations".into(), "operation", &s.by_operation, fit(ops)),
        ops,
    );
    let [rcodes, facts] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(right);
    f.render_widget(
        counts_table("Rcodes".into(), "rcode", &s.rcodes, fit(rcodes)),
        rcodes,
    );
    let w = &s.served.window;
    let u = &s.upstream.window;
    let transports: Vec<String> = s
        .protocols
        .iter()
        .take(3)
        .map(|r| format!("{} {:.0}%", r.key, r.share))
        .collect();
    let lines = vec![
        Line::from(format!(
            "queries {} ({}/s)",
            count(s.queries.0),
            rate(s.queries.1)
        )),
        Line::from(format!(
            "responses {} ({}/s)",
            count(s.responses.0),
            rate(s.responses.1)
        )),
        Line::from(format!(
            "served   p50 {} p99 {}",
            lat(w.p50, w.count),
            lat(w.p99, w.count)
        )),
        Line::from(format!(
            "upstream p50 {} p99 {}",
            lat(u.p50, u.count),
            lat(u.p99, u.count)
        )),
        Line::from(format!("transport {}", transports.join(" "))),
        Line::from(format!(
            "DO bit {}  tables age {}s",
            pct(share(s.dnssec_ok, s.queries.0)),
            s.since_s
        )),
        Line::from(format!(
            "avg since: {} q/s {} ev/s",
            rate(s.queries_avg),
            rate(s.events_avg)
        )),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("Summary (rates: last 10 s)")),
        facts,
    );
}

/// `Servers (3)`, with the events of identities beyond the table's capacity if any.
fn servers_title(s: &Snapshot) -> String {
    if s.identities_overflow > 0 {
        format!(
            "Servers ({}, {} events of more not kept)",
            s.by_identity.len(),
            count(s.identities_overflow)
        )
    } else {
        format!("Servers ({})", s.by_identity.len())
    }
}

fn share(n: u64, all: u64) -> f64 {
    if all == 0 {
        0.0
    } else {
        n as f64 * 100.0 / all as f64
    }
}

fn top_table(
    f: &mut Frame,
    area: Rect,
    title: &str,
    rows: &[Row],
    evicted: u64,
    scroll: usize,
    s: &Snapshot,
) {
    let first = scroll.min(rows.len().saturating_sub(1));
    let body: Vec<TRow> = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(fit(area))
        .map(|(i, r)| {
            let c = if r.error > 0 {
                format!("~{}", count(r.count))
            } else {
                count(r.count)
            };
            TRow::new(vec![
                Cell::from((i + 1).to_string()),
                Cell::from(r.key.clone()),
                Cell::from(c),
                Cell::from(pct(r.share)),
                Cell::from(rate(r.rate)),
            ])
        })
        .collect();
    let title = format!(
        "{title} ({} shown, {} evicted, {}s)",
        rows.len(),
        evicted,
        s.since_s
    );
    let t = Table::new(
        body,
        [
            Constraint::Length(4),
            Constraint::Fill(1),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(7),
        ],
    )
    .header(header(&["#", "name", "count", "%", "/s"]))
    .block(Block::bordered().title(title));
    f.render_widget(t, area);
}

/// Client countries and autonomous systems (the broker's `[enrich.geoip]`): side by side
/// from 120 columns, else one above the other (AS names need the width).
fn geo(f: &mut Frame, area: Rect, scroll: usize, s: &Snapshot) {
    let halves = [Constraint::Percentage(50), Constraint::Percentage(50)];
    let [a, b] = if area.width >= 120 {
        Layout::horizontal(halves).areas(area)
    } else {
        Layout::vertical(halves).areas(area)
    };
    top_table(f, a, "Countries", &s.countries, s.evicted_geo.0, scroll, s);
    top_table(f, b, "ASNs", &s.asns, s.evicted_geo.1, scroll, s);
}

fn codes(f: &mut Frame, area: Rect, s: &Snapshot) {
    let [l, r] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    f.render_widget(
        counts_table(
            format!("Rcodes ({} responses)", count(s.responses.0)),
            "rcode",
            &s.rcodes,
            fit(l),
        ),
        l,
    );
    f.render_widget(
        counts_table(
            format!("Qtypes ({} queries)", count(s.queries.0)),
            "qtype",
            &s.qtypes,
            fit(r),
        ),
        r,
    );
}

fn lat_row(name: &'static str, p: &Percentiles) -> TRow<'static> {
    let n = p.count;
    TRow::new(vec![
        Cell::from(name),
        Cell::from(count(n)),
        Cell::from(lat(p.p50, n)),
        Cell::from(lat(p.p90, n)),
        Cell::from(lat(p.p95, n)),
        Cell::from(lat(p.p99, n)),
        Cell::from(lat(p.max, n)),
    ])
}

fn latency(f: &mut Frame, area: Rect, s: &Snapshot) {
    let [top, bottom] = Layout::vertical([Constraint::Length(7), Constraint::Min(3)]).areas(area);
    let rows = |name_w: &'static str, name_t: &'static str, l: &LatencySummary| {
        [lat_row(name_w, &l.window), lat_row(name_t, &l.total)]
    };
    let mut body: Vec<TRow> = Vec::new();
    body.extend(rows("served 10s", "served all", &s.served));
    body.extend(rows("upstream 10s", "upstream all", &s.upstream));
    let t = Table::new(
        body,
        [
            Constraint::Length(13),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(header(&["latency", "n", "p50", "p90", "p95", "p99", "max"]))
    .block(Block::bordered().title(format!(
        "Latency (event {}, matched {}, none {})",
        s.latency_from_event, s.latency_matched, s.latency_unmatched
    )));
    f.render_widget(t, top);
    let [ab, c] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    let [a, b] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(ab);
    f.render_widget(
        counts_table("Transports".into(), "proto", &s.protocols, fit(a)),
        a,
    );
    f.render_widget(
        counts_table("Families".into(), "family", &s.families, fit(b)),
        b,
    );
    let lines = vec![
        Line::from(format!("EDNS {}", pct(share(s.edns, s.queries.0)))),
        Line::from(format!("DO bit {}", pct(share(s.dnssec_ok, s.queries.0)))),
        Line::from(format!("avg query {:.0} B", s.avg_query_bytes)),
        Line::from(format!("avg resp. {:.0} B", s.avg_response_bytes)),
        Line::from(format!("bad DNS {}", count(s.malformed_dns))),
        Line::from(format!("unmatched q {}", count(s.pending_forgotten))),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("Messages")),
        c,
    );
}

fn broker(f: &mut Frame, area: Rect, b: Option<&BrokerStatus>) {
    let Some(b) = b else {
        let p = Paragraph::new(vec![
            Line::from("No broker metrics: start tapbus-top with"),
            Line::from("  --broker-metrics http://127.0.0.1:9634/metrics"),
            Line::from("(the broker's metrics_listen) to see its connections,"),
            Line::from("frames, events and drops per output and reason."),
        ])
        .block(Block::bordered().title("Broker"));
        f.render_widget(p, area);
        return;
    };
    let state = match (&b.health, &b.error) {
        (_, Some(e)) => format!("scrape failed: {e}"),
        (Some(h), None) if h.is_empty() => "no tapbus metrics at that URL".into(),
        (Some(_), None) => format!("{} scrapes", b.scrapes),
        (None, None) => "waiting for the first scrape".into(),
    };
    let [ins, outs] =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(area);
    let empty = BrokerHealth::default();
    let h = b.health.as_ref().unwrap_or(&empty);
    let num = |v: f64| count(v.max(0.0) as u64);
    let in_rows: Vec<TRow> = h
        .inputs
        .iter()
        .map(|(name, i)| {
            TRow::new(vec![
                Cell::from(name.clone()),
                Cell::from(num(i.active)),
                Cell::from(num(i.connections)),
                Cell::from(num(i.frames)),
                Cell::from(num(i.events)),
                Cell::from(num(i.malformed + i.oversize)),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            in_rows,
            [
                Constraint::Fill(1),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(6),
            ],
        )
        .header(header(&[
            "input", "open", "conns", "frames", "events", "bad",
        ]))
        .block(Block::bordered().title(format!("Broker inputs: {state}"))),
        ins,
    );
    let out_rows: Vec<TRow> = h
        .outputs
        .iter()
        .map(|(name, o)| {
            let up = match o.up {
                Some(v) if v >= 1.0 => "up",
                Some(_) => "DOWN",
                None => "-",
            };
            let reasons: Vec<String> = o
                .dropped
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(r, v)| format!("{r}={}", num(*v)))
                .collect();
            TRow::new(vec![
                Cell::from(name.clone()),
                Cell::from(up),
                Cell::from(num(o.published)),
                Cell::from(num(o.dropped_total())),
                Cell::from(format!("{}/{}", num(o.queue_depth), num(o.queue_capacity))),
                Cell::from(reasons.join(" ")),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            out_rows,
            [
                Constraint::Length(10),
                Constraint::Length(4),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(12),
                Constraint::Fill(1),
            ],
        )
        .header(header(&[
            "output",
            "bus",
            "published",
            "dropped",
            "queue",
            "drops by reason",
        ]))
        .block(Block::bordered().title(format!("Broker outputs ({})", b.url))),
        outs,
    );
}

fn help(f: &mut Frame, area: Rect) {
    let lines: Vec<Line> = [
        "1..8, Tab, arrows  switch view",
        "/        filter: qname contains (Enter, Esc)",
        "i        cycle the identity filter",
        "o        cycle the operation filter",
        "c        clear the filter",
        "p, space pause the screen (counting goes on)",
        "j k PgUp PgDn Home  scroll a top table",
        "q, Ctrl-C  quit",
        "",
        "Rates: last 10 s. Counts: since the filter",
        "was set. Each exchange counted once (its",
        "query, or its response when only responses",
        "are logged). ~ marks space-saving estimates.",
        "Any key closes this help.",
    ]
    .into_iter()
    .map(Line::from)
    .collect();
    let h = (lines.len() as u16 + 2).min(area.height);
    let w = 50.min(area.width);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("Keys")),
        r,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::crossterm::event::{KeyEvent, KeyModifiers};

    use super::*;
    use crate::stats::Stats;
    use crate::stats::tests::event;
    use tapbus_event::EventView;

    fn lines(b: &Buffer) -> Vec<String> {
        let a = b.area;
        (a.y..a.y + a.height)
            .map(|y| {
                (a.x..a.x + a.width)
                    .map(|x| b.cell((x, y)).map_or(" ", |c| c.symbol()))
                    .collect::<String>()
            })
            .collect()
    }

    fn screen(app: &App, snap: &Snapshot, st: &Status, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
        t.draw(|f| render(f, app, snap, st)).expect("draw");
        lines(t.backend().buffer())
    }

    fn has(screen: &[String], want: &str) -> bool {
        screen.iter().any(|l| l.contains(want))
    }

    fn row_of<'a>(screen: &'a [String], want: &str) -> &'a str {
        screen
            .iter()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("{want:?} not on screen:\n{}", screen.join("\n")))
    }

    /// 3 servers; ns1 answers 20 queries for www.example.com (2 NXDOMAIN for
    /// nope.example.com among 10 more), ns2 5 for mail.example.org (SERVFAIL), at second 1.
    fn model() -> Stats {
        let mut s = Stats::new(0);
        let mut feed = |json: String| {
            let v = EventView::parse(json.as_bytes()).expect("event");
            s.record(&v, 1_500);
        };
        let ms = 1_000_000u64;
        for i in 0..20u16 {
            feed(event(
                "CLIENT_QUERY",
                "ns1",
                "www.example.com",
                "A",
                "NOERROR",
                "192.0.2.7",
                i,
                1_000 * ms,
                None,
            ));
            feed(event(
                "CLIENT_RESPONSE",
                "ns1",
                "www.example.com",
                "A",
                "NOERROR",
                "192.0.2.7",
                i,
                1_003 * ms,
                None,
            ));
        }
        for i in 0..10u16 {
            let (q, rc) = if i < 2 {
                ("nope.example.com", "NXDOMAIN")
            } else {
                ("api.example.net", "NOERROR")
            };
            feed(event(
                "CLIENT_QUERY",
                "ns1",
                q,
                "AAAA",
                "NOERROR",
                "198.51.100.3",
                100 + i,
                1_000 * ms,
                None,
            ));
            feed(event(
                "CLIENT_RESPONSE",
                "ns1",
                q,
                "AAAA",
                rc,
                "198.51.100.3",
                100 + i,
                1_001 * ms,
                None,
            ));
        }
        for i in 0..5u16 {
            feed(event(
                "CLIENT_RESPONSE",
                "ns2",
                "mail.example.org",
                "MX",
                "SERVFAIL",
                "2001:db8::5",
                i,
                1_000 * ms,
                Some(0.25),
            ));
        }
        s
    }

    fn status() -> Status {
        Status {
            input: "nats://127.0.0.1:4222".into(),
            conn: Conn::Up,
            broker: None,
        }
    }

    fn key(app: &mut App, code: KeyCode, s: &Stats) {
        app.key(
            KeyEvent::new(code, KeyModifiers::NONE),
            &s.identities(),
            &s.operations(),
        );
    }

    #[test]
    fn overview_fits_80x24_with_the_numbers() {
        let s = model();
        // At 1.5 s: the window is 2 s long (seconds 0 and 1).
        let snap = s.snapshot(1_500, 100);
        let app = App::default();
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(sc[0].starts_with("top 1:Overview 2:Qnames"), "{}", sc[0]);
        assert!(has(&sc, "8:Geo"), "every view is named in 80 columns");
        let wide = screen(&app, &snap, &status(), 100, 24);
        assert!(
            wide[0].starts_with("tapbus-top 1:Overview 2:Qnames"),
            "{}",
            wide[0]
        );
        // 35 exchanges in 2 s; 2 NXDOMAIN and 5 SERVFAIL of 35 responses.
        assert!(
            sc[1].starts_with("q/s 17.5  ev/s 32.5  NXDOMAIN 5.7%  SERVFAIL 14.3%"),
            "{}",
            sc[1]
        );
        let ns1 = row_of(&sc, "ns1");
        assert!(
            ns1.contains("30") && ns1.contains("85.7%") && ns1.contains("15.0"),
            "{ns1}"
        );
        let ns2 = row_of(&sc, "ns2 ");
        assert!(
            ns2.contains("5") && ns2.contains("14.3%") && ns2.contains("2.5"),
            "{ns2}"
        );
        assert!(row_of(&sc, "CLIENT_RESPONSE").contains("35"));
        assert!(row_of(&sc, "CLIENT_QUERY").contains("30"));
        assert!(row_of(&sc, "NOERROR").contains("28"));
        assert!(has(&sc, "transport UDP 100%"));
        // Since the start (1.5 s, counted as at least 1 s): 35 / 1.5 and 65 / 1.5.
        assert!(has(&sc, "avg since: 23.3 q/s 43.3 ev/s"));
        let last = &sc[23];
        assert!(
            last.starts_with("nats://127.0.0.1:4222 up | 32.5 ev/s | events 65 | bad 0"),
            "{last}"
        );
        assert!(last.contains("q:quit"));
    }

    #[test]
    fn views_switch_by_key_and_show_their_tables() {
        let s = model();
        let snap = s.snapshot(1_500, 100);
        let mut app = App::default();
        key(&mut app, KeyCode::Char('2'), &s);
        assert_eq!(app.current(), View::Qnames);
        let sc = screen(&app, &snap, &status(), 80, 24);
        let first = row_of(&sc, "www.example.com");
        assert!(
            first.starts_with("│1 ") && first.contains("20") && first.contains("57.1%"),
            "{first}"
        );
        assert!(row_of(&sc, "api.example.net").contains("8"));
        assert!(has(&sc, "Top qnames (4 shown, 0 evicted"));
        key(&mut app, KeyCode::Tab, &s);
        assert_eq!(app.current(), View::Clients);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(row_of(&sc, "192.0.2.7").contains("20"));
        assert!(row_of(&sc, "2001:db8::5").contains("5"));
        key(&mut app, KeyCode::Tab, &s);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(row_of(&sc, "example.com").contains("22"));
        assert!(row_of(&sc, "example.net").contains("8"));
        key(&mut app, KeyCode::Char('5'), &s);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(row_of(&sc, "SERVFAIL").contains("14.3%"));
        assert!(row_of(&sc, "AAAA").contains("10"));
        assert!(row_of(&sc, "MX").contains("5"));
        key(&mut app, KeyCode::Char('6'), &s);
        let sc = screen(&app, &snap, &status(), 80, 24);
        // served: 20 x 3 ms, 10 x 1 ms, 5 x 250 ms.
        let row = row_of(&sc, "served all");
        assert!(
            row.contains("35") && row.contains("3.0ms") && row.contains("250.0ms"),
            "{row}"
        );
        assert!(has(&sc, "event 5, matched 30, none 0"));
        assert!(row_of(&sc, "INET6").contains("14.3%"));
        key(&mut app, KeyCode::Char('7'), &s);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(has(&sc, "--broker-metrics"));
        key(&mut app, KeyCode::BackTab, &s);
        assert_eq!(app.current(), View::Latency);
        key(&mut app, KeyCode::Char('?'), &s);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(has(&sc, "cycle the identity filter"));
        key(&mut app, KeyCode::Char('x'), &s);
        assert!(!app.help);
        key(&mut app, KeyCode::Char('p'), &s);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(sc[23].contains("PAUSED"));
        assert!(!app.quit);
        key(&mut app, KeyCode::Char('q'), &s);
        assert!(app.quit);
        let mut app = App::default();
        app.key(
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            &[],
            &[],
        );
        assert!(app.quit);
    }

    #[test]
    fn filter_keys_set_the_filter_and_the_screen_shows_it() {
        let s = model();
        let mut app = App::default();
        key(&mut app, KeyCode::Char('i'), &s);
        assert_eq!(app.filter.identity(), Some("ns1"));
        key(&mut app, KeyCode::Char('i'), &s);
        assert_eq!(app.filter.identity(), Some("ns2"));
        key(&mut app, KeyCode::Char('i'), &s);
        assert_eq!(app.filter.identity(), None);
        key(&mut app, KeyCode::Char('o'), &s);
        assert_eq!(app.filter.operation(), Some(Operation::ClientQuery));
        key(&mut app, KeyCode::Char('c'), &s);
        assert!(app.filter.is_empty());
        key(&mut app, KeyCode::Char('/'), &s);
        for c in "NOPE".chars() {
            key(&mut app, KeyCode::Char(c), &s);
        }
        key(&mut app, KeyCode::Char('x'), &s);
        key(&mut app, KeyCode::Backspace, &s);
        let sc = screen(&app, &s.snapshot(1_500, 100), &status(), 80, 24);
        assert!(
            sc[23].contains("qname contains:") && sc[23].contains("NOPE_"),
            "{}",
            sc[23]
        );
        key(&mut app, KeyCode::Char('q'), &s);
        assert!(!app.quit, "q is text while typing");
        key(&mut app, KeyCode::Backspace, &s);
        key(&mut app, KeyCode::Enter, &s);
        assert_eq!(app.filter.qname(), Some("nope"));
        // The binary hands the filter to the model, which counts only what matches.
        let mut s2 = Stats::new(0);
        s2.set_filter(app.filter.clone(), 0);
        let json = event(
            "CLIENT_QUERY",
            "ns1",
            "nope.example.com",
            "A",
            "NOERROR",
            "192.0.2.1",
            1,
            1,
            None,
        );
        let other = event(
            "CLIENT_QUERY",
            "ns1",
            "www.example.com",
            "A",
            "NOERROR",
            "192.0.2.1",
            2,
            1,
            None,
        );
        for j in [&json, &other, &json] {
            s2.record(&EventView::parse(j.as_bytes()).expect("event"), 500);
        }
        let mut app2 = App::default();
        key(&mut app2, KeyCode::Char('2'), &s2);
        let sc = screen(&app2, &s2.snapshot(500, 100), &status(), 80, 24);
        assert!(sc[1].contains("filter: qname~nope"), "{}", sc[1]);
        assert!(row_of(&sc, "nope.example.com").contains("100.0%"));
        assert!(!has(&sc, "www.example.com"));
    }

    #[test]
    fn a_larger_terminal_shows_more_rows_and_the_broker_view() {
        let mut s = Stats::new(0);
        for i in 0..40u16 {
            let q = format!("host{i:02}.example.com");
            for _ in 0..=(40 - i) {
                let j = event(
                    "CLIENT_QUERY",
                    "ns1",
                    &q,
                    "A",
                    "NOERROR",
                    "192.0.2.1",
                    i,
                    1,
                    None,
                );
                s.record(&EventView::parse(j.as_bytes()).expect("event"), 100);
            }
        }
        let snap = s.snapshot(100, 200);
        let mut app = App::default();
        key(&mut app, KeyCode::Char('2'), &s);
        let small = screen(&app, &snap, &status(), 80, 24);
        // 24 lines: title, summary, status, 2 borders, 1 header: 18 rows.
        assert!(has(&small, "host17.example.com") && !has(&small, "host18.example.com"));
        let big = screen(&app, &snap, &status(), 120, 50);
        assert!(has(&big, "host39.example.com"));
        assert!(row_of(&big, "host00.example.com").contains("41"));
        // Scrolling moves the first row.
        key(&mut app, KeyCode::Down, &s);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(!has(&sc, "host00.example.com") && has(&sc, "host18.example.com"));
        // The broker view with a scrape.
        let mut st = status();
        st.broker = Some(BrokerStatus {
            url: "http://127.0.0.1:9634/metrics".into(),
            health: Some(BrokerHealth::parse(crate::prom::tests::BROKER_METRICS)),
            error: None,
            scrapes: 3,
            failures: 0,
        });
        key(&mut app, KeyCode::Char('7'), &s);
        for (w, h) in [(80, 24), (120, 50)] {
            let sc = screen(&app, &snap, &st, w, h);
            let unix = row_of(&sc, "unix");
            assert!(unix.contains("1500") && unix.contains("1499"), "{unix}");
            let nats = row_of(&sc, "nats ");
            assert!(
                nats.contains("DOWN") && nats.contains("1400") && nats.contains("99"),
                "{nats}"
            );
            assert!(
                nats.contains("12/16384") && nats.contains("queue_full=90"),
                "{nats}"
            );
            assert!(row_of(&sc, "stdout").contains(" up "));
        }
        st.broker = Some(BrokerStatus {
            url: "http://127.0.0.1:9/metrics".into(),
            error: Some("connection refused".into()),
            ..BrokerStatus::default()
        });
        let sc = screen(&app, &snap, &st, 80, 24);
        assert!(has(&sc, "scrape failed: connection refused"));
    }

    #[test]
    #[ignore]
    fn print_every_view() {
        let s = model();
        let snap = s.snapshot(1_500, 100);
        let mut app = App::default();
        for v in View::ALL {
            app.view = ViewState(v);
            println!("{}", screen(&app, &snap, &status(), 80, 24).join("\n"));
        }
    }

    #[test]
    fn geo_view_shows_countries_and_asns() {
        use crate::stats::tests::with_geo;
        let mut s = Stats::new(0);
        let fr = r#"{"country":"FR","asn":3215,"as-org":"Orange"}"#;
        for (i, geo) in [fr, fr, r#"{"country":"SE"}"#, ""].into_iter().enumerate() {
            let q = event(
                "CLIENT_QUERY",
                "ns1",
                "a.example",
                "A",
                "NOERROR",
                "81.2.69.160",
                i as u16,
                1_000_000,
                None,
            );
            let v = with_geo(&q, geo);
            s.record(&EventView::parse(v.as_bytes()).expect("event"), 1_500);
        }
        let snap = s.snapshot(1_500, 100);
        let mut app = App::default();
        key(&mut app, KeyCode::Char('8'), &s);
        assert_eq!(app.current(), View::Geo);
        let sc = screen(&app, &snap, &status(), 80, 24);
        assert!(has(&sc, "Countries (3 shown"), "{}", sc.join("\n"));
        assert!(row_of(&sc, " FR ").contains("50.0%"), "{}", sc.join("\n"));
        assert!(has(&sc, "AS3215 Orange"), "{}", sc.join("\n"));
        assert!(has(&sc, "(unknown)"), "{}", sc.join("\n"));
        let wide = screen(&app, &snap, &status(), 140, 24);
        // Side by side from 120 columns.
        assert!(
            row_of(&wide, "Countries (").contains("ASNs ("),
            "{}",
            wide.join("\n")
        );
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        let s = model();
        let snap = s.snapshot(1_500, 100);
        let mut app = App::default();
        for v in 0..View::ALL.len() {
            app.view = ViewState(View::ALL[v]);
            for (w, h) in [(1, 1), (10, 3), (20, 5), (80, 4)] {
                app.help = v % 2 == 0;
                let _ = screen(&app, &snap, &status(), w, h);
            }
        }
    }
}
