// A Rust program built with panic=abort: a panic ends in abort(), SIGABRT.
#[inline(never)]
fn parse_port(s: &str) -> u16 {
    s.parse().expect("port must be a number")
}
fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "http".to_string());
    println!("{}", parse_port(&arg));
}
