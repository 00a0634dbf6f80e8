//! The `derived` section: values computed from other points (today: bits packed into one
//! number), each with its own publish rule.
//!
//! It resolves the points it reads by `device.point`; it must not compute anything (the mappings
//! do, at run time) and has no scripting.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::devices::Devices;
use super::{Ctx, check_name, publish_rule};
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::mappings::DataType;
use crate::model::*;

/// The `derived` section, in order.
pub(super) fn compile(ctx: &mut Ctx, raw: &[Located<RawDerived>], devs: &Devices) -> Vec<Derived> {
    let mut derived = Vec::new();
    let mut derived_names = HashSet::new();
    for (i, dv) in raw.iter().enumerate() {
        let path = format!(
            "derived[{}]",
            if dv.name.is_empty() {
                i.to_string()
            } else {
                dv.name.value.clone()
            }
        );
        check_name(ctx, &dv.name, &format!("{path}.name"));
        if !derived_names.insert(dv.name.value.clone()) {
            ctx.err(
                &dv.name,
                format!("{path}.name"),
                format!("duplicate derived name `{}`", dv.name.value),
            );
        }
        if dv.pack_bits.is_empty() || dv.pack_bits.len() > 63 {
            ctx.err(
                dv,
                format!("{path}.pack_bits"),
                "pack_bits needs 1 to 63 points",
            );
        }
        let mut bits = Vec::new();
        for (bi, r) in dv.pack_bits.iter().enumerate() {
            let bpath = format!("{path}.pack_bits[{bi}]");
            if let Some(pid) = devs.resolve(ctx, r, &bpath) {
                if !matches!(devs.points[pid].dtype, DataType::Bool | DataType::Bit(_)) {
                    ctx.err(
                        r,
                        &bpath,
                        format!("`{}` is not a boolean point (bool or bit)", r.value),
                    );
                }
                bits.push(pid);
            }
        }
        let default_interval = bits.first().map_or(Duration::from_secs(1), |&p| {
            devs.devices[devs.points[p].device].poll_interval
        });
        let rule = publish_rule(
            ctx,
            &dv.publish,
            &format!("{path}.publish"),
            default_interval,
        );
        ctx.note_topic(
            &rule.topic,
            (dv.publish.topic.line, dv.publish.topic.col),
            &format!("{path}.publish.topic"),
        );
        derived.push(Derived {
            name: Arc::from(dv.name.as_str()),
            pack_bits: bits,
            publish: rule,
        });
    }
    derived
}
