//! The embedding walkthrough (`cargo run -p service-examples --example embed`) runs to the
//! end: every step of it is public API working together.

#[path = "../examples/embed.rs"]
#[allow(unreachable_pub, unused_qualifications)]
mod embed;

#[test]
fn the_embed_example_runs() {
    embed::main().expect("the embed example");
}
