//! The assemblies, top of the import graph below the tools: every service in
//! one process ([`local`], with [`local_canary`] for a second orders
//! version), one service per process ([`distributed`], with
//! [`consumer`] for the bus-fed read models), the OpenAPI documents of the
//! services ([`openapi`]) and the audit endpoint that reads every service's
//! data ([`audit`]).

pub(crate) mod audit;
pub(crate) mod consumer;
pub mod distributed;
pub(crate) mod local;
pub(crate) mod local_canary;
pub(crate) mod openapi;
