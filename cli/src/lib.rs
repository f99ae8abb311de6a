//! The `baton` command as a library, so tests can start the server in-process.

pub mod admin;
pub mod assets;
pub mod config;
pub mod console;
pub mod console_login;
pub mod demo;
pub mod livechat_authorize;
pub mod serve;
pub mod telegram_poll;
